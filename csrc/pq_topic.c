/* pq_topic.c - the broadcast ring behind pyqueue.Topic. See pq_topic.h and
 * docs/design.md ("Topic") for the protocol and its memory orders. */
#define _GNU_SOURCE
#include "pq_topic.h"
#include "pq_shutdown.h"

#include <string.h>

#include "pq_claim_lock.h"
#include "pq_fault.h"
#include "pq_proc.h"
#include "pq_record.h"
#include "pq_topic_internal.h"

int pq_topic_create(void *base, size_t size, uint64_t capacity, int mode,
                    const uint64_t *user_params, int n_user_params)
{
    uint64_t params[PQ_TOPIC_NPARAMS] = {0};
    int rc;

    if (!pq_is_power_of_two(capacity) || capacity < PQ_TOPIC_MIN_CAPACITY ||
        capacity > PQ_TOPIC_MAX_CAPACITY || size < pq_topic_segment_size(capacity))
        return -EINVAL;
    if (mode != PQ_TOPIC_LOSSLESS && mode != PQ_TOPIC_LOSSY)
        return -EINVAL;
    if (n_user_params < 0 || n_user_params > PQ_TOPIC_NPARAMS - PQ_TOPIC_PARAM_USER0)
        return -EINVAL;
    params[PQ_TOPIC_PARAM_CAPACITY] = capacity;
    params[PQ_TOPIC_PARAM_MODE] = (uint64_t)mode;
    for (int i = 0; i < n_user_params; i++)
        params[PQ_TOPIC_PARAM_USER0 + i] = user_params[i];
    rc = pq_segment_init(base, size, PQ_KIND_TOPIC, PQ_TOPIC_DATA_OFFSET, capacity, params,
                         PQ_TOPIC_NPARAMS);
    if (rc < 0)
        return rc;
    pq_topic_ctl *ctl = (pq_topic_ctl *)((uint8_t *)base + PQ_TOPIC_CTL_OFFSET);
    memset(ctl, 0, sizeof *ctl);
    rc = pq_claim_lock_init(&ctl->claim_lock); /* robust, process-shared */
    if (rc < 0)
        return rc;
    pq_segment_publish(base);
    return 0;
}

int pq_topic_open(pq_topic *t, void *base, size_t size)
{
    memset(t, 0, sizeof *t);
    if (((uintptr_t)base & 15) != 0)
        return -EINVAL;
    int rc = pq_segment_check(base, size, PQ_KIND_TOPIC);
    if (rc < 0)
        return rc;
    pq_segment_header *h = base;
    uint64_t capacity = h->params[PQ_TOPIC_PARAM_CAPACITY];
    if (h->data_offset != PQ_TOPIC_DATA_OFFSET || capacity != h->data_size ||
        !pq_is_power_of_two(capacity) || capacity < PQ_TOPIC_MIN_CAPACITY ||
        capacity > PQ_TOPIC_MAX_CAPACITY || pq_topic_segment_size(capacity) > size)
        return PQ_ERR_TRUNCATED;
    if (h->params[PQ_TOPIC_PARAM_MODE] > PQ_TOPIC_LOSSY)
        return PQ_ERR_CORRUPT;
    t->hdr = h;
    t->ctl = (pq_topic_ctl *)((uint8_t *)base + PQ_TOPIC_CTL_OFFSET);
    t->data = (uint8_t *)base + PQ_TOPIC_DATA_OFFSET;
    t->capacity = capacity;
    t->mask = capacity - 1;
    t->mode = (int)h->params[PQ_TOPIC_PARAM_MODE];
    t->max_payload = capacity / 4 - PQ_RECORD_HEADER;
    if (t->max_payload > UINT32_MAX)
        t->max_payload = UINT32_MAX & ~(uint64_t)(PQ_RECORD_ALIGN - 1);
    return 0;
}

int pq_topic_lock(pq_topic *t)
{
    pq_topic_pending *pd = pq_topic_pending_words(t);
    const pq_claim_words w = {&t->ctl->tail, &t->ctl->tail_msgs, &pd->claim_tail,
                              &pd->claim_msgs, NULL, 0};
    int died;
    int rc = pq_claim_lock_ex(&t->ctl->claim_lock, &w, &died);
    if (rc == 0 && died) {
        /* The holder died moving head (pq_topic_move_head): complete the
         * move it announced, so that head_msgs matches head. Completing
         * is what it had decided: the lossless check came before the
         * announcement, nothing is overwritten before head is stored, and
         * out-of-band records passed are in a pending reclaim announced
         * before the move. Relaxed: under the lock (acquired above). */
        uint64_t to = atomic_load_explicit(&pd->move_head, memory_order_relaxed);
        if (to != 0) {
            atomic_store_explicit(&t->ctl->head_msgs,
                                  atomic_load_explicit(&pd->move_msgs, memory_order_relaxed),
                                  memory_order_relaxed);
            /* release: as every head store (a lossy reader's validation). */
            atomic_store_explicit(&t->ctl->head, to, memory_order_release);
            /* release: after both stores above, should this holder die too. */
            atomic_store_explicit(&pd->move_head, 0, memory_order_release);
        }
    }
    return rc;
}

void pq_topic_unlock(pq_topic *t)
{
    pthread_mutex_unlock(&t->ctl->claim_lock);
}

int pq_topic_claim(pq_topic *t, const uint32_t *lens, uint32_t n, uint64_t *pos_out,
                   uint64_t *needed_head)
{
    return pq_topic_claim_refs(t, lens, n, pos_out, needed_head, NULL);
}

int pq_topic_claim_refs(pq_topic *t, const uint32_t *lens, uint32_t n, uint64_t *pos_out,
                        uint64_t *needed_head, pq_topic_refs *refs)
{
    pq_topic_ctl *c = t->ctl;
    pq_proc_id self;
    uint64_t need = 0;
    int rc;

    if (n == 0 || lens == NULL || pos_out == NULL)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        if (lens[i] > t->max_payload)
            return -EMSGSIZE;
        need += pq_record_size(lens[i]);
    }
    if (need > t->capacity / 2 && n > 1)
        return -EMSGSIZE;
    rc = pq_proc_self(&self);
    if (rc < 0)
        return rc;
    const uint64_t owner = pq_proc_pack(&self);
    rc = pq_topic_lock(t);
    if (rc < 0)
        return rc;

    uint64_t tl, h, hm;
    rc = pq_topic_load_ends(t, &tl, &h, &hm);
    if (rc == 0)
        rc = pq_topic_reclaim_pending(t, tl, h, refs);
    if (rc < 0) {
        pq_topic_unlock(t);
        return rc;
    }
    /* Lay the records out (a record never wraps: padding before it). */
    uint64_t p = tl;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t size = pq_record_size(lens[i]);
        uint64_t off = p & t->mask;
        if (off + size > t->capacity)
            p += t->capacity - off;
        pos_out[i] = p;
        p += size;
    }
    /* Walk head past every record the claim will overwrite. Their headers
     * were written by earlier claims under this lock. Counted first, the
     * out-of-band records among them are reported below, once the claim
     * is known to go ahead. */
    const uint64_t h0 = h, hm0 = hm;
    uint32_t n_oob = 0;
    rc = pq_topic_pass(t, &h, &hm, p - t->capacity, tl, NULL, &n_oob, NULL, 0);
    if (rc < 0) {
        pq_topic_unlock(t);
        return rc;
    }
    if (t->mode == PQ_TOPIC_LOSSLESS &&
        h != atomic_load_explicit(&c->head, memory_order_relaxed)) {
        /* acquire: pairs with the subscribers' release store of their
         * cursor, so their copies of what we overwrite are complete. */
        for (int i = 0; i < PQ_TOPIC_SUBS; i++) {
            pq_topic_slot *sl = &c->slots[i];
            if (atomic_load_explicit(&sl->owner, memory_order_relaxed) == 0)
                continue;
            uint64_t cur = atomic_load_explicit(&sl->cursor, memory_order_acquire);
            if ((int64_t)(cur - h) < 0) {
                pq_topic_unlock(t);
                if (needed_head)
                    *needed_head = h;
                return -EAGAIN;
            }
        }
    }
    if (n_oob > 0 && refs != NULL) {
        /* Out-of-band records among those passed: their segments may only
         * be unlinked once head is past them, and they must not be
         * forgotten if this caller dies before it unlinks them. So this
         * claim claims nothing: it reports their references (as many as
         * refs holds), moves head past them as a pending reclaim - the
         * records stay intact, no claim overwrites them until a caller
         * says it unlinked the segments - and returns -ENOBUFS. The
         * caller unlinks them and claims again with refs->reclaim, which
         * ends the reclaim (pq_topic_reclaim_pending). */
        const uint32_t before = refs->count;
        h = h0;
        hm = hm0;
        rc = pq_topic_pass(t, &h, &hm, p - t->capacity, tl, refs, NULL, NULL, 0);
        if (rc < 0 && rc != -ENOBUFS) {
            pq_topic_unlock(t);
            return rc;
        }
        if (refs->count == before) { /* no room for a single one */
            pq_topic_unlock(t);
            return -EINVAL;
        }
        pq_topic_reclaim_start(t, h0, h, hm, refs);
        pq_topic_unlock(t);
        PQ_FAULT_POINT(PQ_FAULT_RECLAIM_REPORTED); /* a fault build can stop here (tests) */
        return -ENOBUFS;
    }
    pq_topic_pending *pd = pq_topic_pending_words(t);
    const uint64_t msgs = atomic_load_explicit(&c->tail_msgs, memory_order_relaxed);
    atomic_store_explicit(&pd->claim_msgs, msgs, memory_order_relaxed);
    atomic_store_explicit(&pd->claim_tail, p, memory_order_release);
    /*
     * Move head first, then a release fence, then overwrite: a lossy
     * subscriber copies a record, issues an acquire fence and re-reads
     * head; if its copy saw any byte written after this fence (headers
     * below, payloads after the tail store), it also sees the new head
     * and discards the copy (the seqlock pattern; docs/design.md).
     */
    if (h != h0)
        pq_topic_move_head(t, h, hm);
    atomic_thread_fence(memory_order_release);

    uint64_t q = tl;
    uint32_t nmsgs = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (pos_out[i] != q) {
            pq_record_header *pad = pq_topic_header_at(t, q);
            atomic_store_explicit(&pad->owner, 0, memory_order_relaxed);
            atomic_store_explicit(&pad->ctl,
                                  pq_record_ctl(q, (uint32_t)(pos_out[i] - q - PQ_RECORD_HEADER), 0,
                                           PQ_REC_PADDING),
                                  memory_order_relaxed);
        }
        pq_record_header *rec = pq_topic_header_at(t, pos_out[i]);
        atomic_store_explicit(&rec->owner, owner, memory_order_relaxed);
        atomic_store_explicit(&rec->ctl, pq_record_ctl(pos_out[i], lens[i], 0, PQ_REC_CLAIMED),
                              memory_order_relaxed);
        q = pos_out[i] + pq_record_size(lens[i]);
        nmsgs++;
    }
    atomic_store_explicit(&c->tail_msgs, msgs + nmsgs, memory_order_relaxed);
    /* release: publishes the headers to subscribers (acquire on tail). */
    atomic_store_explicit(&c->tail, p, memory_order_release);
    atomic_store_explicit(&pd->claim_tail, 0, memory_order_release);
    pq_topic_unlock(t);
    return 0;
}

void pq_topic_commit(pq_topic *t, uint64_t pos, uint8_t type)
{
    PQ_FAULT_POINT(PQ_FAULT_BEFORE_COMMIT); /* a fault build can stop here (tests) */
    pq_record_header *rec = pq_topic_header_at(t, pos);
    uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_relaxed);
    /* release: the payload is visible to whoever sees COMMITTED (acquire). */
    atomic_store_explicit(&rec->ctl, pq_record_ctl(pos, pq_ctl_len(ctl), type, PQ_REC_COMMITTED),
                          memory_order_release);
}

void pq_topic_notify_readable(pq_topic *t)
{
    pq_event_notify(&t->ctl->readable, INT32_MAX);
}

/* --- subscribers ----------------------------------------------------- */

int pq_topic_subscribe(pq_topic *t, pq_topic_sub *s, int start)
{
    pq_topic_ctl *c = t->ctl;
    pq_proc_id self;
    s->slot = -1;
    int rc = pq_proc_self(&self);
    if (rc < 0)
        return rc;
    rc = pq_topic_lock(t);
    if (rc < 0)
        return rc;
    int slot = -1;
    for (int i = 0; i < PQ_TOPIC_SUBS; i++)
        if (atomic_load_explicit(&c->slots[i].owner, memory_order_relaxed) == 0) {
            slot = i;
            break;
        }
    if (slot < 0) {
        pq_topic_unlock(t);
        return -ENOSPC;
    }
    uint64_t cur, msgs;
    if (start == PQ_TOPIC_START_EARLIEST) {
        cur = atomic_load_explicit(&c->head, memory_order_relaxed);
        msgs = atomic_load_explicit(&c->head_msgs, memory_order_relaxed);
    } else {
        cur = atomic_load_explicit(&c->tail, memory_order_relaxed);
        msgs = atomic_load_explicit(&c->tail_msgs, memory_order_relaxed);
    }
    pq_topic_slot *sl = &c->slots[slot];
    atomic_store_explicit(&sl->cursor, cur, memory_order_relaxed);
    atomic_store_explicit(&sl->msgs, msgs, memory_order_relaxed);
    atomic_store_explicit(&sl->lost, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->owner, pq_proc_pack(&self), memory_order_release);
    atomic_fetch_add_explicit(&c->nsubs, 1, memory_order_relaxed);
    pq_topic_unlock(t);
    s->slot = slot;
    s->owner = pq_proc_pack(&self);
    s->cursor = cur;
    s->msgs = msgs;
    s->lost = 0;
    return 0;
}

/* Free a slot if it still belongs to owner (under the lock): 1 freed, 0
 * not (another owner now), or the lock's error (PQ_ERR_LOCK_BUSY in the
 * bindings: call again once the lock is had; nothing was changed). */
static int pq_topic_free_slot(pq_topic *t, int slot, uint64_t owner)
{
    pq_topic_ctl *c = t->ctl;
    int rc = pq_topic_lock(t);
    if (rc < 0)
        return rc;
    int freed = 0;
    if (atomic_load_explicit(&c->slots[slot].owner, memory_order_relaxed) == owner) {
        atomic_store_explicit(&c->slots[slot].owner, 0, memory_order_release);
        atomic_fetch_sub_explicit(&c->nsubs, 1, memory_order_relaxed);
        freed = 1;
    }
    pq_topic_unlock(t);
    if (freed)
        pq_event_notify(&c->writable, INT32_MAX);
    return freed;
}

int pq_topic_unsubscribe(pq_topic *t, pq_topic_sub *s)
{
    if (s->slot < 0 || t->ctl == NULL)
        return 0;
    int rc = pq_topic_free_slot(t, s->slot, s->owner);
    if (rc < 0)
        return rc; /* slot kept: the caller calls again */
    s->slot = -1;
    return 0;
}

int pq_topic_evict_dead(pq_topic *t, uint64_t needed_head)
{
    pq_topic_ctl *c = t->ctl;
    int evicted = 0;
    for (int i = 0; i < PQ_TOPIC_SUBS; i++) {
        pq_topic_slot *sl = &c->slots[i];
        uint64_t owner = atomic_load_explicit(&sl->owner, memory_order_acquire);
        if (owner == 0)
            continue;
        if (needed_head != UINT64_MAX &&
            (int64_t)(atomic_load_explicit(&sl->cursor, memory_order_relaxed) - needed_head) >= 0)
            continue;
        int32_t pid;
        uint64_t start32;
        pq_proc_unpack(owner, &pid, &start32);
        if (pq_proc_alive(pid, start32, 1) != 0)
            continue; /* alive, or cannot tell: keep it */
        int rc = pq_topic_free_slot(t, i, owner);
        if (rc < 0)
            return evicted ? evicted : rc; /* the rest on the next call */
        evicted += rc;
    }
    return evicted;
}

/* Move a lapped lossy subscriber to head, counting what it missed. */
static int pq_topic_jump(pq_topic *t, pq_topic_sub *s)
{
    pq_topic_ctl *c = t->ctl;
    int rc = pq_topic_lock(t);
    if (rc < 0)
        return rc;
    /* Under the lock head and head_msgs are a consistent pair. */
    uint64_t h = atomic_load_explicit(&c->head, memory_order_relaxed);
    uint64_t hm = atomic_load_explicit(&c->head_msgs, memory_order_relaxed);
    pq_topic_unlock(t);
    if ((int64_t)(h - s->cursor) > 0) {
        if (hm > s->msgs)
            s->lost += hm - s->msgs;
        s->cursor = h;
        s->msgs = hm;
        pq_topic_slot *sl = &c->slots[s->slot];
        atomic_store_explicit(&sl->lost, s->lost, memory_order_relaxed);
        atomic_store_explicit(&sl->msgs, hm, memory_order_relaxed);
        atomic_store_explicit(&sl->cursor, h, memory_order_release);
    }
    return 0;
}

int pq_topic_peek(pq_topic *t, pq_topic_sub *s, pq_topic_record *out, uint32_t max,
                  pq_topic_batch *b)
{
    pq_topic_ctl *c = t->ctl;
    if (s->slot < 0)
        return -EINVAL;
    if (atomic_load_explicit(&c->slots[s->slot].owner, memory_order_relaxed) != s->owner)
        return -EOWNERDEAD; /* evicted */
    for (int attempt = 0;; attempt++) {
        /* acquire on tail: headers below it are published. */
        uint64_t tl = atomic_load_explicit(&c->tail, memory_order_acquire);
        uint64_t p = s->cursor, m = s->msgs;
        b->start = p;
        b->count = 0;
        b->skipped = 0;
        if (t->mode == PQ_TOPIC_LOSSY &&
            (int64_t)(atomic_load_explicit(&c->head, memory_order_acquire) - p) > 0) {
            int rc = pq_topic_jump(t, s);
            if (rc < 0)
                return rc;
            if (attempt > 1000)
                return -EAGAIN;
            continue;
        }
        if (tl - p > t->capacity || (p & (PQ_RECORD_ALIGN - 1)) != 0)
            return PQ_ERR_CORRUPT;
        while (p != tl && b->count < max) {
            uint64_t off = p & t->mask;
            pq_record_header *rec = (pq_record_header *)(t->data + off);
            /* acquire: pairs with the commit's release. */
            uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
            uint64_t size = pq_record_size(pq_ctl_len(ctl));
            if (pq_ctl_tag(ctl) != pq_record_tag(p) || size > t->capacity - off || size > tl - p)
                goto stale;
            uint8_t st = pq_ctl_state(ctl);
            if (st == PQ_REC_CLAIMED)
                break;
            if (st == PQ_REC_COMMITTED) {
                out[b->count].pos = p;
                out[b->count].payload = (const uint8_t *)rec + PQ_RECORD_HEADER;
                out[b->count].len = pq_ctl_len(ctl);
                out[b->count].type = pq_ctl_type(ctl);
                b->count++;
                m++;
            } else if (st == PQ_REC_ABANDONED) {
                b->skipped++;
                m++;
            } else if (st != PQ_REC_PADDING) {
                goto stale;
            }
            p += size;
        }
        b->next = p;
        b->next_msgs = m;
        if (p == b->start)
            return p == tl ? -EAGAIN : -EINPROGRESS;
        return (int)b->count;
    stale:
        /* Lossy: a publisher lapped us while we looked (head says so on
         * the next round). Lossless: records at or after the cursor are
         * never overwritten, so this is a corrupt segment. */
        if (t->mode != PQ_TOPIC_LOSSY || attempt > 1000)
            return PQ_ERR_CORRUPT;
        atomic_thread_fence(memory_order_acquire);
        if ((int64_t)(atomic_load_explicit(&c->head, memory_order_relaxed) - s->cursor) <= 0)
            return PQ_ERR_CORRUPT;
    }
}

int pq_topic_advance(pq_topic *t, pq_topic_sub *s, const pq_topic_batch *b)
{
    pq_topic_ctl *c = t->ctl;
    if (s->slot < 0 || b->start != s->cursor)
        return -EINVAL;
    if (t->mode == PQ_TOPIC_LOSSY) {
        /* Validate the optimistic copy: our copies happen before this
         * fence; if any byte we copied was overwritten, the publisher
         * moved head past b->start before (release fence) writing it. */
        atomic_thread_fence(memory_order_acquire);
        if ((int64_t)(atomic_load_explicit(&c->head, memory_order_relaxed) - b->start) > 0)
            return -ESTALE;
    }
    s->cursor = b->next;
    s->msgs = b->next_msgs;
    pq_topic_slot *sl = &c->slots[s->slot];
    atomic_store_explicit(&sl->msgs, b->next_msgs, memory_order_relaxed);
    /* release: our reads of the records are done before a lossless
     * publisher that sees the new cursor (acquire) overwrites them. */
    atomic_store_explicit(&sl->cursor, b->next, memory_order_release);
    if (t->mode == PQ_TOPIC_LOSSLESS)
        pq_event_notify(&c->writable, INT32_MAX);
    return 0;
}

static int pq_topic_readable(pq_topic *t, uint64_t cursor)
{
    pq_topic_ctl *c = t->ctl;
    uint64_t tl = atomic_load_explicit(&c->tail, memory_order_acquire);
    if (tl == cursor)
        /* Read everything: ready once shut down (the get then raises).
         * A record still being written is waited for even then. */
        return pq_shutdown_seen(t->hdr) != 0;
    if (tl - cursor > t->capacity || (cursor & (PQ_RECORD_ALIGN - 1)) != 0)
        return 1;
    pq_record_header *rec = pq_topic_header_at(t, cursor);
    uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
    return pq_ctl_state(ctl) != PQ_REC_CLAIMED || pq_ctl_tag(ctl) != pq_record_tag(cursor);
}

struct pq_topic_rwait {
    pq_topic *t;
    uint64_t v;
};

static int pq_topic_readable_cb(void *arg)
{
    struct pq_topic_rwait *w = arg;
    return pq_topic_readable(w->t, w->v);
}

int pq_topic_wait_readable(pq_topic *t, const pq_topic_sub *s, int64_t deadline_ns,
                           uint32_t spin_ns)
{
    struct pq_topic_rwait w = {t, s->cursor};
    return pq_event_wait_until(&t->ctl->readable, pq_topic_readable_cb, &w, spin_ns, deadline_ns);
}

/* Has every held slot's cursor reached needed (or been freed)? */
static int pq_topic_room(pq_topic *t, uint64_t needed)
{
    pq_topic_ctl *c = t->ctl;
    for (int i = 0; i < PQ_TOPIC_SUBS; i++) {
        pq_topic_slot *sl = &c->slots[i];
        if (atomic_load_explicit(&sl->owner, memory_order_acquire) == 0)
            continue;
        if ((int64_t)(atomic_load_explicit(&sl->cursor, memory_order_acquire) - needed) < 0)
            return 0;
    }
    return 1;
}

static int pq_topic_room_cb(void *arg)
{
    struct pq_topic_rwait *w = arg;
    return pq_topic_room(w->t, w->v) || pq_shutdown_seen(w->t->hdr);
}

int pq_topic_shutdown(pq_topic *t, uint32_t how)
{
    int before = pq_shutdown_set(t->hdr, how);
    if (before < 0)
        return before;
    /* After the flag (pq_shutdown.h): every parked subscriber and
     * publisher, in every process, returns and sees it. */
    pq_event_wake_all(&t->ctl->readable);
    pq_event_wake_all(&t->ctl->writable);
    return before;
}

int pq_topic_wait_writable(pq_topic *t, uint64_t needed_head, int64_t deadline_ns,
                           uint32_t spin_ns)
{
    struct pq_topic_rwait w = {t, needed_head};
    return pq_event_wait_until(&t->ctl->writable, pq_topic_room_cb, &w, spin_ns, deadline_ns);
}

int pq_topic_repair(pq_topic *t, const pq_topic_sub *s)
{
    pq_topic_ctl *c = t->ctl;
    uint64_t p = s->cursor;
    uint64_t tl = atomic_load_explicit(&c->tail, memory_order_acquire);
    if (p == tl || tl - p > t->capacity || (p & (PQ_RECORD_ALIGN - 1)) != 0)
        return 0;
    pq_record_header *rec = pq_topic_header_at(t, p);
    uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
    if (pq_ctl_tag(ctl) != pq_record_tag(p) || pq_ctl_state(ctl) != PQ_REC_CLAIMED)
        return 0;
    int32_t pid;
    uint64_t start32;
    pq_proc_unpack(atomic_load_explicit(&rec->owner, memory_order_relaxed), &pid, &start32);
    int alive = pq_proc_alive(pid, start32, 1);
    if (alive != 0)
        return alive < 0 ? alive : 0;
    /* Still the same record (head has not passed it: lossy lapping)? */
    if ((int64_t)(atomic_load_explicit(&c->head, memory_order_acquire) - p) > 0)
        return 0;
    uint64_t abandoned = pq_record_ctl(p, pq_ctl_len(ctl), 0, PQ_REC_ABANDONED);
    if (!atomic_compare_exchange_strong_explicit(&rec->ctl, &ctl, abandoned,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return 0;
    pq_topic_notify_readable(t);
    return 1;
}

uint64_t pq_topic_lag(const pq_topic *t, const pq_topic_sub *s)
{
    uint64_t claimed = atomic_load_explicit(&t->ctl->tail_msgs, memory_order_acquire);
    return claimed > s->msgs ? claimed - s->msgs : 0;
}

void pq_topic_get_stats(const pq_topic *t, pq_topic_stats *st)
{
    pq_topic_ctl *c = t->ctl;
    uint64_t hm = atomic_load_explicit(&c->head_msgs, memory_order_acquire);
    st->published = atomic_load_explicit(&c->tail_msgs, memory_order_acquire);
    st->retained = st->published > hm ? st->published - hm : 0;
    st->capacity = t->capacity;
    st->subscribers = atomic_load_explicit(&c->nsubs, memory_order_relaxed);
    st->waiting_publishers = pq_event_waiters(&c->writable);
    st->waiting_subscribers = pq_event_waiters(&c->readable);
}
