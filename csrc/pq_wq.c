/* pq_wq.c - the acknowledged work queue. See pq_wq.h and docs/design.md
 * ("WorkQueue"). */
#define _GNU_SOURCE
#include "pq_wq.h"
#include "pq_shutdown.h"
#include "pq_wq_internal.h"

#include <string.h>

#include "pq_claim_lock.h"
#include "pq_proc.h"

#define PQ_WQ_OWNER_CACHE 64

static uint64_t pq_wq_data_offset(uint32_t slots, uint32_t dedup_slots)
{
    return pq_align_up(PQ_WQ_SLOTS_OFFSET + (uint64_t)slots * sizeof(pq_wq_slot) +
                           pq_wq_dedup_bytes(dedup_slots),
                       4096);
}

static int pq_wq_args_ok(uint64_t capacity, uint32_t slots, uint32_t dedup_slots)
{
    return pq_is_power_of_two(capacity) && capacity >= PQ_WQ_MIN_CAPACITY &&
           capacity <= PQ_WQ_MAX_CAPACITY && pq_is_power_of_two(slots) && slots >= 2 &&
           slots <= PQ_WQ_MAX_SLOTS && (dedup_slots == 0 || pq_is_power_of_two(dedup_slots)) &&
           dedup_slots <= PQ_WQ_MAX_SLOTS;
}

uint64_t pq_wq_segment_size(uint64_t capacity, uint32_t slots, uint32_t dedup_slots)
{
    if (!pq_wq_args_ok(capacity, slots, dedup_slots))
        return 0;
    return pq_wq_data_offset(slots, dedup_slots) + capacity;
}

int pq_wq_create(void *base, size_t size, uint64_t capacity, uint32_t slots,
                 uint32_t dedup_slots, int64_t visibility_ns, uint32_t max_deliveries,
                 int64_t dedup_window_ns, uint64_t max_payload, uint64_t user_flags,
                 const void *user, uint32_t user_len)
{
    uint64_t need = pq_wq_segment_size(capacity, slots, dedup_slots);
    if (need == 0 || size < need || ((uintptr_t)base & 63) != 0 || visibility_ns <= 0 ||
        dedup_window_ns < 0 || user_len > PQ_WQ_USER_BYTES || (user_len && user == NULL) ||
        max_payload > capacity / 4)
        return -EINVAL;
    uint64_t params[PQ_WQ_NPARAMS] = {capacity,       slots,          dedup_slots,
                                      (uint64_t)visibility_ns, max_deliveries,
                                      (uint64_t)dedup_window_ns, user_flags, max_payload};
    uint64_t data_off = pq_wq_data_offset(slots, dedup_slots);
    int rc = pq_segment_init(base, size, PQ_KIND_WORKQ, data_off, capacity, params,
                             PQ_WQ_NPARAMS);
    if (rc < 0)
        return rc;
    pq_wq_ctl *ctl = (pq_wq_ctl *)((uint8_t *)base + PQ_WQ_CTL_OFFSET);
    memset(ctl, 0, sizeof *ctl);
    rc = pq_claim_lock_init(&ctl->lock);
    if (rc < 0)
        return rc;
    ctl->user_len = user_len;
    if (user_len)
        memcpy(ctl->user, user, user_len);
    atomic_store_explicit(&ctl->scan_wake, INT64_MAX, memory_order_relaxed);
    /* Slots and dedup entries are zero in a fresh mapping: FREE, empty. */
    memset((uint8_t *)base + PQ_WQ_SLOTS_OFFSET, 0, data_off - PQ_WQ_SLOTS_OFFSET);
    pq_segment_publish(base);
    return 0;
}

int pq_wq_open(pq_wq *q, void *base, size_t size)
{
    memset(q, 0, sizeof *q);
    if (((uintptr_t)base & 63) != 0)
        return -EINVAL;
    int rc = pq_segment_check(base, size, PQ_KIND_WORKQ);
    if (rc < 0)
        return rc;
    pq_segment_header *h = base;
    uint64_t capacity = h->params[PQ_WQ_PARAM_CAPACITY];
    uint64_t slots = h->params[PQ_WQ_PARAM_SLOTS];
    uint64_t dedup = h->params[PQ_WQ_PARAM_DEDUP_SLOTS];
    if (slots > PQ_WQ_MAX_SLOTS || dedup > PQ_WQ_MAX_SLOTS ||
        !pq_wq_args_ok(capacity, (uint32_t)slots, (uint32_t)dedup) ||
        (int64_t)h->params[PQ_WQ_PARAM_VISIBILITY_NS] <= 0 ||
        (int64_t)h->params[PQ_WQ_PARAM_DEDUP_WINDOW_NS] < 0 ||
        h->params[PQ_WQ_PARAM_MAX_DELIVERIES] > UINT32_MAX ||
        h->params[PQ_WQ_PARAM_MAX_PAYLOAD] > capacity / 4)
        return PQ_ERR_CORRUPT;
    uint64_t data_off = pq_wq_data_offset((uint32_t)slots, (uint32_t)dedup);
    if (h->data_offset != data_off || h->data_size != capacity || data_off + capacity > size)
        return PQ_ERR_TRUNCATED;
    q->hdr = h;
    q->ctl = (pq_wq_ctl *)((uint8_t *)base + PQ_WQ_CTL_OFFSET);
    q->slots = (pq_wq_slot *)((uint8_t *)base + PQ_WQ_SLOTS_OFFSET);
    pq_wq_dedup_attach(&q->dedup, &q->ctl->dedup, q->slots + slots, (uint32_t)dedup,
                       (int64_t)h->params[PQ_WQ_PARAM_DEDUP_WINDOW_NS]);
    q->data = (uint8_t *)base + data_off;
    q->capacity = capacity;
    q->mask = capacity - 1;
    q->nslots = (uint32_t)slots;
    q->dedup_slots = (uint32_t)dedup;
    q->visibility_ns = (int64_t)h->params[PQ_WQ_PARAM_VISIBILITY_NS];
    q->max_deliveries = (uint32_t)h->params[PQ_WQ_PARAM_MAX_DELIVERIES];
    q->dedup_window_ns = (int64_t)h->params[PQ_WQ_PARAM_DEDUP_WINDOW_NS];
    q->max_payload = h->params[PQ_WQ_PARAM_MAX_PAYLOAD] ? h->params[PQ_WQ_PARAM_MAX_PAYLOAD]
                                                        : capacity / 4;
    if (q->ctl->user_len > PQ_WQ_USER_BYTES)
        return PQ_ERR_CORRUPT;
    return 0;
}

uint64_t pq_wq_key_hash(const void *key, size_t len)
{
    const uint8_t *p = key;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h == 0 ? 1 : h;
}


/* Under the lock: pass the DONE messages at the head, freeing their slots
 * and bytes. The head moves past each before its slot is marked FREE (a
 * FREE slot with the head's id is passed too), so a holder that dies in
 * here leaves nothing the next pass cannot go on from. */
int pq_wq_advance_head(pq_wq *q)
{
    pq_wq_ctl *c = q->ctl;
    uint64_t h = atomic_load_explicit(&c->head, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&c->tail, memory_order_relaxed);
    uint64_t h0 = h;
    while (h < t && t - h <= q->nslots) {
        pq_wq_slot *s = pq_wq_slot_of(q, h);
        uint32_t st = atomic_load_explicit(&s->state, memory_order_relaxed);
        if ((st != PQ_WQ_DONE && st != PQ_WQ_FREE) ||
            atomic_load_explicit(&s->id, memory_order_relaxed) != h)
            break;
        atomic_store_explicit(&c->head, h + 1, memory_order_relaxed);
        atomic_store_explicit(&s->state, PQ_WQ_FREE, memory_order_relaxed);
        h++;
    }
    /* head_pos from head, always (a pass cut short left it behind: that
     * only ever hid room, never handed it out twice). */
    atomic_store_explicit(&c->head_pos,
                          h < t ? pq_wq_slot_of(q, h)->pos
                                : atomic_load_explicit(&c->tail_pos, memory_order_relaxed),
                          memory_order_relaxed);
    return h != h0;
}

int pq_wq_lock(pq_wq *q)
{
    int died;
    int rc = pq_lock_take(&q->ctl->lock, &died);
    if (rc == 0 && died) {
        /* A dead holder may have been anywhere in a change: pass what is
         * done at the head, forget the scan hint (the next get scans from
         * the head), and wake everyone to look again. */
        pq_wq_advance_head(q);
        atomic_store_explicit(&q->ctl->scan, 0, memory_order_relaxed);
        rc = -pthread_mutex_consistent(&q->ctl->lock);
        if (rc != 0) {
            pthread_mutex_unlock(&q->ctl->lock);
            return rc;
        }
        pq_wq_announce(&q->ctl->writable_seq, &q->ctl->writable, INT32_MAX);
        pq_wq_announce(&q->ctl->readable_seq, &q->ctl->readable, INT32_MAX);
    }
    return rc;
}

/* This process's owner word (pid | start time). */
int pq_wq_me(uint64_t *me)
{
    pq_proc_id self;
    int rc = pq_proc_self(&self);
    if (rc < 0)
        return rc;
    *me = pq_proc_pack(&self);
    return 0;
}

/* Who this process is, then the lock: the prologue of every verb that
 * marks messages as its own. */
int pq_wq_lock_as(pq_wq *q, uint64_t *me)
{
    int rc = pq_wq_me(me);
    return rc < 0 ? rc : pq_wq_lock(q);
}

void pq_wq_fill(const pq_wq *q, pq_wq_slot *s, uint64_t id, pq_wq_delivery *d)
{
    d->id = id;
    d->deliveries = atomic_load_explicit(&s->deliveries, memory_order_relaxed);
    d->len = s->len;
    d->payload = q->data + (s->pos & q->mask);
    d->type = s->type;
    d->reason = s->reason;
    d->enqueued_ms = s->enqueued_ms;
    d->deadline_ns = atomic_load_explicit(&s->at_ns, memory_order_relaxed);
}

/* Under the lock: the slot of a delivery `me` holds, or NULL. */
pq_wq_slot *pq_wq_slot_held(pq_wq *q, uint64_t me, uint64_t id, uint32_t deliveries,
                            uint32_t state)
{
    uint64_t h = atomic_load_explicit(&q->ctl->head, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&q->ctl->tail, memory_order_relaxed);
    if (id < h || id >= t)
        return NULL;
    pq_wq_slot *s = pq_wq_slot_of(q, id);
    if (atomic_load_explicit(&s->id, memory_order_relaxed) != id ||
        atomic_load_explicit(&s->state, memory_order_relaxed) != state ||
        atomic_load_explicit(&s->owner, memory_order_relaxed) != me ||
        (deliveries != UINT32_MAX &&
         atomic_load_explicit(&s->deliveries, memory_order_relaxed) != deliveries))
        return NULL;
    return s;
}

/* Under the lock: the slot of a delivery this process holds, or NULL. */
static pq_wq_slot *pq_wq_holder_slot(pq_wq *q, uint64_t id, uint32_t deliveries, uint32_t state)
{
    uint64_t me;
    if (pq_wq_me(&me) < 0)
        return NULL;
    return pq_wq_slot_held(q, me, id, deliveries, state);
}

int pq_wq_held(pq_wq *q, uint64_t id, uint32_t deliveries)
{
    int rc = pq_wq_lock(q);
    if (rc < 0)
        return rc;
    pq_wq_slot *s = pq_wq_holder_slot(q, id, deliveries, PQ_WQ_ACQUIRED);
    pq_wq_unlock(q);
    return s != NULL ? 0 : -ESTALE;
}

/* Under the lock: a message this process holds in `state` is DONE
 * (counted as `counter`); the head passes it if it can. */
static int pq_wq_finish(pq_wq *q, uint64_t id, uint32_t deliveries, uint32_t state, int counter)
{
    int rc = pq_wq_lock(q);
    if (rc < 0)
        return rc;
    pq_wq_slot *s = pq_wq_holder_slot(q, id, deliveries, state);
    int moved = 0;
    if (s != NULL) {
        atomic_store_explicit(&s->state, PQ_WQ_DONE, memory_order_relaxed);
        pq_wq_count(q, counter);
        moved = pq_wq_advance_head(q);
    }
    pq_wq_unlock(q);
    if (moved)
        pq_wq_announce(&q->ctl->writable_seq, &q->ctl->writable, INT32_MAX);
    return s != NULL ? 0 : -ESTALE;
}

int pq_wq_reject(pq_wq *q, uint64_t id, uint32_t deliveries)
{
    int rc = pq_wq_lock(q);
    if (rc < 0)
        return rc;
    pq_wq_slot *s = pq_wq_holder_slot(q, id, deliveries, PQ_WQ_ACQUIRED);
    if (s != NULL) {
        s->reason = PQ_WQ_REASON_REJECTED;
        atomic_store_explicit(&s->state, PQ_WQ_DEAD, memory_order_relaxed);
    }
    pq_wq_unlock(q);
    return s != NULL ? 0 : -ESTALE;
}

int pq_wq_extend(pq_wq *q, uint64_t id, uint32_t deliveries, int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return -EINVAL;
    int rc = pq_wq_lock(q);
    if (rc < 0)
        return rc;
    pq_wq_slot *s = pq_wq_holder_slot(q, id, deliveries, PQ_WQ_ACQUIRED);
    if (s != NULL) {
        atomic_store_explicit(&s->at_ns, pq_wq_after(pq_monotonic_ns(), timeout_ns),
                              memory_order_relaxed);
        pq_wq_rescan(q, id); /* its deadline may now be the earliest */
    }
    pq_wq_unlock(q);
    return s != NULL ? 0 : -ESTALE;
}

int pq_wq_dead_done(pq_wq *q, uint64_t id)
{
    return pq_wq_finish(q, id, UINT32_MAX, PQ_WQ_DEAD, PQ_WQ_DEAD_LETTERED);
}

int pq_wq_dead_park(pq_wq *q, uint64_t id, int64_t retry_ns)
{
    if (retry_ns < 0)
        return -EINVAL;
    int rc = pq_wq_lock(q);
    if (rc < 0)
        return rc;
    pq_wq_slot *s = pq_wq_holder_slot(q, id, UINT32_MAX, PQ_WQ_DEAD);
    if (s != NULL) {
        atomic_store_explicit(&s->at_ns, pq_wq_after(pq_monotonic_ns(), retry_ns),
                              memory_order_relaxed);
        atomic_store_explicit(&s->owner, 0, memory_order_relaxed); /* any mover, from at_ns on */
        pq_wq_count(q, PQ_WQ_DEAD_PARKED);
        pq_wq_rescan(q, id); /* a get must see when it comes due */
    }
    pq_wq_unlock(q);
    if (s != NULL) /* a waiting get takes its retry time into its wake-up */
        pq_wq_announce(&q->ctl->readable_seq, &q->ctl->readable, 1);
    return s != NULL ? 0 : -ESTALE;
}

/* Is the process of an owner word alive? Cached per call of pq_wq_reap:
 * the messages in flight belong to few processes. */
struct pq_wq_owners {
    uint64_t owner[PQ_WQ_OWNER_CACHE];
    int alive[PQ_WQ_OWNER_CACHE];
    int n;
};

static int pq_wq_owner_alive(struct pq_wq_owners *oc, uint64_t owner)
{
    for (int i = 0; i < oc->n; i++)
        if (oc->owner[i] == owner)
            return oc->alive[i];
    int32_t pid;
    uint64_t start32;
    pq_proc_unpack(owner, &pid, &start32);
    /* -errno (cannot tell) counts as alive: never take a live one's. */
    int alive = pq_proc_alive(pid, start32, 1) != 0;
    if (oc->n < PQ_WQ_OWNER_CACHE) {
        oc->owner[oc->n] = owner;
        oc->alive[oc->n] = alive;
        oc->n++;
    }
    return alive;
}

int pq_wq_reap(pq_wq *q)
{
    struct pq_wq_owners oc = {.n = 0};
    uint64_t me;
    int rc = pq_wq_lock_as(q, &me);
    if (rc < 0)
        return rc;
    pq_wq_ctl *c = q->ctl;
    uint64_t h = atomic_load_explicit(&c->head, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&c->tail, memory_order_relaxed);
    int64_t now = pq_monotonic_ns();
    int changed = 0, readable = 0;
    for (uint64_t id = h; id < t && t - h <= q->nslots; id++) {
        pq_wq_slot *s = pq_wq_slot_of(q, id);
        if (atomic_load_explicit(&s->id, memory_order_relaxed) != id)
            continue;
        uint32_t st = atomic_load_explicit(&s->state, memory_order_acquire);
        uint64_t owner = atomic_load_explicit(&s->owner, memory_order_relaxed);
        if ((st != PQ_WQ_CLAIMED && st != PQ_WQ_ACQUIRED && st != PQ_WQ_DEAD) || owner == 0 ||
            owner == me || pq_wq_owner_alive(&oc, owner))
            continue;
        if (st == PQ_WQ_CLAIMED) {
            uint32_t expect = PQ_WQ_CLAIMED;
            if (!atomic_compare_exchange_strong_explicit(&s->state, &expect, PQ_WQ_DONE,
                                                         memory_order_acq_rel,
                                                         memory_order_relaxed))
                continue; /* committed meanwhile: not dead after all */
            if (s->dedup_entry != 0) /* never enqueued: a retry is not a duplicate */
                pq_wq_dedup_give_back(&q->dedup, s->dedup_entry - 1, id, now);
            pq_wq_count(q, PQ_WQ_ABANDONED);
        } else if (st == PQ_WQ_ACQUIRED) {
            s->reason = PQ_WQ_REASON_DIED;
            atomic_store_explicit(&s->at_ns, now, memory_order_relaxed);
            atomic_store_explicit(&s->state, PQ_WQ_AVAILABLE, memory_order_relaxed);
            pq_wq_count(q, PQ_WQ_REDELIVERED);
            readable = 1;
        } else {
            /* For the next mover, at once. */
            atomic_store_explicit(&s->at_ns, now, memory_order_relaxed);
            atomic_store_explicit(&s->owner, 0, memory_order_relaxed);
            readable = 1;
        }
        pq_wq_rescan(q, id);
        changed++;
    }
    int moved = pq_wq_advance_head(q);
    pq_wq_unlock(q);
    if (readable)
        pq_wq_announce(&c->readable_seq, &c->readable, INT32_MAX);
    if (moved)
        pq_wq_announce(&c->writable_seq, &c->writable, INT32_MAX);
    return changed;
}

struct pq_wq_wait {
    _Atomic uint64_t *seq;
    uint64_t seen;
    const pq_segment_header *hdr;
};

static int pq_wq_changed(void *arg)
{
    struct pq_wq_wait *w = arg;
    /* Shut down counts as a change: a waiter never parks past the wake. */
    return atomic_load_explicit(w->seq, memory_order_acquire) != w->seen ||
           pq_shutdown_seen(w->hdr);
}

int pq_wq_shutdown(pq_wq *q, uint32_t how)
{
    int before = pq_shutdown_set(q->hdr, how);
    if (before < 0)
        return before;
    /* After the flag (pq_shutdown.h): every parked getter and putter, in
     * every process, returns and sees it. */
    pq_event_wake_all(&q->ctl->readable);
    pq_event_wake_all(&q->ctl->writable);
    return before;
}

int pq_wq_wait_readable(pq_wq *q, uint64_t seen, int64_t deadline_ns, uint32_t spin_ns)
{
    struct pq_wq_wait w = {&q->ctl->readable_seq, seen, q->hdr};
    return pq_event_wait_until(&q->ctl->readable, pq_wq_changed, &w, spin_ns, deadline_ns);
}

int pq_wq_wait_writable(pq_wq *q, uint64_t seen, int64_t deadline_ns, uint32_t spin_ns)
{
    struct pq_wq_wait w = {&q->ctl->writable_seq, seen, q->hdr};
    return pq_event_wait_until(&q->ctl->writable, pq_wq_changed, &w, spin_ns, deadline_ns);
}

int pq_wq_copy_message(pq_wq *q, uint64_t id, void *buf, uint32_t buf_len, pq_wq_delivery *d,
                       uint32_t *state)
{
    int rc = pq_wq_lock(q);
    if (rc < 0)
        return rc;
    uint64_t h = atomic_load_explicit(&q->ctl->head, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&q->ctl->tail, memory_order_relaxed);
    pq_wq_slot *s = pq_wq_slot_of(q, id);
    uint32_t st = atomic_load_explicit(&s->state, memory_order_acquire);
    if (id < h || id >= t || atomic_load_explicit(&s->id, memory_order_relaxed) != id ||
        st == PQ_WQ_FREE || st == PQ_WQ_DONE || !pq_wq_slot_sane(q, s)) {
        pq_wq_unlock(q);
        return -ENOENT;
    }
    pq_wq_fill(q, s, id, d);
    if (state)
        *state = st;
    uint32_t len = s->len;
    if (len <= buf_len && buf != NULL && st != PQ_WQ_CLAIMED)
        memcpy(buf, d->payload, len);
    d->payload = NULL;
    pq_wq_unlock(q);
    return (int)len;
}

int pq_wq_bounds(pq_wq *q, uint64_t *head, uint64_t *tail)
{
    *head = atomic_load_explicit(&q->ctl->head, memory_order_acquire);
    *tail = atomic_load_explicit(&q->ctl->tail, memory_order_acquire);
    /* At most nslots messages are not done: more is damage, and a scan
     * of [head, tail) would not end (up to 2^64 steps). */
    return *tail >= *head && *tail - *head <= q->nslots ? 0 : PQ_ERR_CORRUPT;
}

int pq_wq_get_stats(pq_wq *q, pq_wq_stats *s)
{
    int rc = pq_wq_lock(q);
    if (rc < 0) {
        memset(s, 0, sizeof *s);
        return rc;
    }
    pq_wq_peek_stats(q, s);
    pq_wq_unlock(q);
    return 0;
}

/* Without the lock every load is still of a word of the segment and the
 * scan is bounded by nslots: the counts may only disagree with each other. */
void pq_wq_peek_stats(pq_wq *q, pq_wq_stats *s)
{
    memset(s, 0, sizeof *s);
    pq_wq_ctl *c = q->ctl;
    uint64_t h = atomic_load_explicit(&c->head, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&c->tail, memory_order_relaxed);
    int64_t now = pq_monotonic_ns();
    for (uint64_t id = h; id < t && t - h <= q->nslots; id++) {
        pq_wq_slot *sl = pq_wq_slot_of(q, id);
        uint32_t st = atomic_load_explicit(&sl->state, memory_order_relaxed);
        int64_t at = atomic_load_explicit(&sl->at_ns, memory_order_relaxed);
        if (st == PQ_WQ_AVAILABLE)
            *(at > now ? &s->delayed : &s->available) += 1;
        else if (st == PQ_WQ_ACQUIRED) /* past its deadline: available */
            *(at > now ? &s->in_flight : &s->available) += 1;
        else if (st == PQ_WQ_DEAD)
            s->dead++;
        else if (st == PQ_WQ_CLAIMED)
            s->claimed++;
    }
    for (int i = 0; i < PQ_WQ_COUNTERS; i++)
        s->counters[i] = atomic_load_explicit(&c->counters[i], memory_order_relaxed);
    /* Claims count as enqueued when they are made; a dead producer's is
     * not a message after all. */
    s->counters[PQ_WQ_ENQUEUED] -= s->counters[PQ_WQ_ABANDONED] < s->counters[PQ_WQ_ENQUEUED]
                                       ? s->counters[PQ_WQ_ABANDONED]
                                       : s->counters[PQ_WQ_ENQUEUED];
    s->capacity = q->capacity;
    uint64_t tp = atomic_load_explicit(&c->tail_pos, memory_order_relaxed);
    uint64_t hp = atomic_load_explicit(&c->head_pos, memory_order_relaxed);
    s->used_bytes = tp >= hp && tp - hp <= q->capacity ? tp - hp : q->capacity;
    s->slots = q->nslots;
    s->dedup_used = pq_wq_dedup_used(&q->dedup); /* relaxed loads: a count */
}
