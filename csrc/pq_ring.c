/* pq_ring.c - create/attach, claim/commit (producers), peek/consume
 * (consumers) and repair of the MPMC record ring. See pq_ring.h. */
#define _GNU_SOURCE
#include "pq_ring.h"

#include <string.h>

#include "pq_cas.h"
#include "pq_claim_lock.h"
#include "pq_fault.h"
#include "pq_proc.h"


/* The header of a record of this view's last claim (see pq_ring_payload). */
static inline pq_record_header *pq_ring_header_at(const pq_ring *r, uint64_t pos)
{
    return (pq_record_header *)(r->ep_base + ((pos - r->ep_start) & (r->ep_cap - 1)));
}

/*
 * What this thread's last pq_ring_claim saw when it failed on maxsize
 * (ctl NULL otherwise), for pq_ring_wait_writable in pq_ring_wait.c.
 * Where a consumer moves head before it adds to head_msgs (no double-width
 * CAS, see pq_ring_consume), a claim can see the new head with the old
 * count, fail, and then wait for head to move again after the consumer's
 * wake-up went out: the wait must also watch head_msgs against the value
 * the claim used. (Harmless where the two move together.)
 */
static int pq_ring_rd_current(pq_ring *r);

_Thread_local const pq_ring_ctl *pq_ring_full_ctl;
_Thread_local uint64_t pq_ring_full_passed;

int pq_ring_create(void *base, size_t size, uint64_t capacity, uint64_t maxsize,
                   const uint64_t *user_params, int n_user_params)
{
    return pq_ring_create_backed(base, size, capacity, maxsize, user_params, n_user_params,
                                 UINT64_MAX);
}

int pq_ring_create_backed(void *base, size_t size, uint64_t capacity, uint64_t maxsize,
                          const uint64_t *user_params, int n_user_params, uint64_t backed)
{
    uint64_t params[PQ_RING_NPARAMS] = {0};
    pq_ring_ctl *ctl;
    int rc;

    if (!pq_is_power_of_two(capacity) || capacity < PQ_RING_MIN_CAPACITY ||
        capacity > PQ_RING_MAX_CAPACITY || size < pq_ring_segment_size(capacity))
        return -EINVAL;
    /* As many levels as `size` holds. */
    unsigned nlevels = 1;
    while (nlevels < pq_ring_max_levels(capacity) &&
           PQ_RING_DATA_OFFSET + pq_ring_span(capacity, nlevels + 1) <= size)
        nlevels++;
    const uint64_t span = pq_ring_span(capacity, nlevels);
    if (n_user_params < 0 || n_user_params > PQ_RING_NPARAMS - PQ_RING_PARAM_USER0)
        return -EINVAL;
    params[PQ_RING_PARAM_CAPACITY] = capacity;
    params[PQ_RING_PARAM_MAXSIZE] = maxsize;
    for (int i = 0; i < n_user_params; i++)
        params[PQ_RING_PARAM_USER0 + i] = user_params[i];

    rc = pq_segment_init(base, size, PQ_KIND_QUEUE, PQ_RING_DATA_OFFSET, span, params,
                         PQ_RING_NPARAMS);
    if (rc < 0)
        return rc;

    ctl = (pq_ring_ctl *)((uint8_t *)base + PQ_RING_CTL_OFFSET);
    memset(ctl, 0, sizeof *ctl);
    rc = pq_claim_lock_init(&ctl->claim_lock); /* robust, process-shared */
    if (rc < 0)
        return rc;
    /* relaxed: published with the whole control block by the release in
     * pq_segment_publish; nobody can open the segment before. Epoch 0
     * (the zeroed entry 0: start 0, level 0) is the current one; level
     * 0's region is backed up to `backed`. */
    atomic_store_explicit(&ctl->level_reserved[0],
                          (backed < capacity ? backed : capacity) / PQ_RING_EXTENT_UNIT,
                          memory_order_relaxed);

    pq_segment_publish(base);
    return 0;
}

int pq_ring_open(pq_ring *r, void *base, size_t size)
{
    /* A view that failed to open is still safe to release (no slot). */
    memset(r, 0, sizeof *r);
    r->slot = -1;
    if (((uintptr_t)base & 15) != 0)
        return -EINVAL; /* the head pair's CAS needs 16-byte alignment */
    int rc = pq_segment_check(base, size, PQ_KIND_QUEUE);
    if (rc < 0)
        return rc;
    pq_segment_header *h = base;
    uint64_t capacity = h->params[PQ_RING_PARAM_CAPACITY];
    if (h->data_offset != PQ_RING_DATA_OFFSET || !pq_is_power_of_two(capacity) ||
        capacity < PQ_RING_MIN_CAPACITY || capacity > PQ_RING_MAX_CAPACITY)
        return PQ_ERR_TRUNCATED;
    /* The data area holds 1..pq_ring_max_levels regions, exactly. */
    const uint64_t data_size = h->data_size;
    unsigned nlevels = 1;
    while (nlevels < pq_ring_max_levels(capacity) && pq_ring_span(capacity, nlevels) < data_size)
        nlevels++;
    if (pq_ring_span(capacity, nlevels) != data_size || data_size > size - PQ_RING_DATA_OFFSET)
        return PQ_ERR_TRUNCATED;
    r->hdr = h;
    r->ctl = (pq_ring_ctl *)((uint8_t *)base + PQ_RING_CTL_OFFSET);
    r->data = (uint8_t *)base + PQ_RING_DATA_OFFSET;
    r->capacity = capacity;
    r->mask = capacity - 1;
    r->maxsize = h->params[PQ_RING_PARAM_MAXSIZE];
    r->span = data_size;
    r->nlevels = nlevels;
    r->head_cache = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
    /* The first peek loads tail (and checks it against the epoch). */
    r->tail_cache = r->head_cache;
    r->rd_seen = atomic_load_explicit(&r->ctl->epoch, memory_order_acquire);
    r->rd_start = r->rd_end = 0; /* nothing cached: the first peek looks up */
    (void)pq_ring_rd_current(r); /* a damaged entry: the first peek says so */
    /* The producer's epoch is loaded by the first claim, under the lock;
     * until then no claim passes the reservation check for nothing. */
    r->ep_n = UINT64_MAX;
    r->ep_base = r->data;
    r->ep_cap = capacity;
    r->reserved_cache = 0;
    r->reserve_need = 0;
    r->held = 0;
    r->slot_owner = 0;
    /* A record may take at most half the ring, so that one always fits
     * after at most one padding record. */
    r->max_payload = capacity / 2 - PQ_RECORD_HEADER;
    if (r->max_payload > UINT32_MAX)
        r->max_payload = UINT32_MAX & ~(uint64_t)(PQ_RECORD_ALIGN - 1);
    return 0;
}

static int pq_ring_lock(pq_ring *r)
{
    pq_ring_ctl *c = r->ctl;
    const pq_claim_words w = {&c->tail, &c->tail_msgs, &c->claim_tail, &c->claim_msgs,
                              &c->dirty_levels, pq_ring_grown_levels(r)};
    return pq_claim_lock(&c->claim_lock, &w);
}

/*
 * The slow half of the check in pq_ring_claim, out of line (cold): is the
 * data area backed up to the end of a claim ending at position p (in the
 * first lap; past it, the whole area)? Re-reads ctl->reserved into the
 * view's cache; when not, records in r->reserve_need how far it must be.
 */
__attribute__((noinline, cold)) static int pq_ring_backed_to(pq_ring *r, uint64_t p)
{
    const uint64_t off = p - r->ep_start;
    const uint64_t end = off < r->ep_cap ? off : r->ep_cap;
    /* Re-reads the level's extent (acquire there, pairs with the release
     * in pq_ring_reserve) into reserved_cache. */
    int rc = pq_ring_epoch_load(r, r->ep_n);
    if (rc < 0)
        return rc;
    if (r->reserved_cache == UINT64_MAX || p <= r->reserved_cache)
        return 1;
    r->reserve_need = end;
    return 0;
}

/* Lay out n records from t in the view's epoch: a record that would cross
 * the end of its region starts at the region's beginning instead, after a
 * padding record. Returns the end of the last one. */
static inline uint64_t pq_ring_lay_out(const pq_ring *r, uint64_t t, const uint32_t *lens,
                                       uint32_t n, uint64_t *pos_out)
{
    uint64_t p = t;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t size = pq_ring_record_size(lens[i]);
        uint64_t off = (p - r->ep_start) & (r->ep_cap - 1);
        if (off + size > r->ep_cap)
            p += r->ep_cap - off;
        pos_out[i] = p;
        p += size;
    }
    return p;
}

int pq_ring_claim(pq_ring *r, const uint32_t *lens, uint32_t n, uint64_t *pos_out)
{
    pq_ring_ctl *c = r->ctl;
    pq_proc_id self;
    uint64_t t, h, p, need = 0;
    int rc;

    pq_ring_full_ctl = NULL;
    if (n == 0 || lens == NULL || pos_out == NULL)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        if (lens[i] > r->max_payload)
            return -EMSGSIZE;
        need += pq_ring_record_size(lens[i]);
    }
    /* Each record may need a padding record before it in the worst case
     * only once per lap; a batch larger than half the ring may never fit. */
    if (need > r->capacity / 2 && n > 1)
        return -EMSGSIZE;
    rc = pq_proc_self(&self);
    if (rc < 0)
        return rc;
    const uint64_t owner = pq_proc_pack(&self);

    rc = pq_ring_lock(r);
    if (rc < 0)
        return rc;

    /* relaxed: epoch, tail and tail_msgs are only written under the claim
     * lock. The epoch changes rarely (a grow, a trim): one comparison. */
    const uint64_t epoch = atomic_load_explicit(&c->epoch, memory_order_relaxed);
    if (__builtin_expect(epoch != r->ep_n, 0) && (rc = pq_ring_epoch_load(r, epoch)) < 0) {
        pthread_mutex_unlock(&c->claim_lock);
        return rc;
    }
    t = atomic_load_explicit(&c->tail, memory_order_relaxed);
    h = r->head_cache;
    /* A misaligned tail (only a corrupt segment) would lay a header
     * across the end of the data area. */
    if ((t & (PQ_RECORD_ALIGN - 1)) != 0) {
        pthread_mutex_unlock(&c->claim_lock);
        return PQ_ERR_CORRUPT;
    }

    if (r->maxsize != 0) {
        uint64_t claimed = atomic_load_explicit(&c->tail_msgs, memory_order_relaxed);
        uint64_t passed = atomic_load_explicit(&c->head_msgs, memory_order_acquire);
        /* Every claim keeps claimed - passed <= maxsize and passed only
         * grows: more (or fewer than none) is a corrupt segment, where
         * "full" would block producers for good. */
        if (claimed - passed > r->maxsize) {
            pthread_mutex_unlock(&c->claim_lock);
            return PQ_ERR_CORRUPT;
        }
        if (claimed - passed + n > r->maxsize) {
            pthread_mutex_unlock(&c->claim_lock);
            pq_ring_full_ctl = c;
            pq_ring_full_passed = passed;
            return -EAGAIN;
        }
    }

    /* Lay the records out in the current epoch. The room there is from
     * the later of head and the epoch's start (older epochs' records lie
     * in other regions). */
    p = pq_ring_lay_out(r, t, lens, n, pos_out);
    if (p - pq_pos_max(h, r->ep_start) > r->ep_cap || t - h > r->span ||
        t - r->ep_start >= PQ_POS_HALF) {
        /* acquire: pairs with the consumers' CAS (release) on head, so
         * their reads of the payloads we may now overwrite are complete.
         * (The cached value was loaded the same way.) */
        h = atomic_load_explicit(&c->head, memory_order_acquire);
        r->head_cache = h;
        /* head past tail or the whole data area behind it: claims never
         * let that happen, so the segment is corrupt ("no room" would be
         * for good). */
        if (t - h > r->span || t - pq_pos_max(h, r->ep_start) > r->ep_cap) {
            pthread_mutex_unlock(&c->claim_lock);
            return PQ_ERR_CORRUPT;
        }
        if (p - pq_pos_max(h, r->ep_start) > r->ep_cap) {
            /* Full: go on in a new epoch one level up (twice the room,
             * empty), unless this is the last level. A batch fits there
             * (at most half of the smallest region), from its start. */
            rc = pq_ring_grow(r, t);
            if (rc < 0) {
                pthread_mutex_unlock(&c->claim_lock);
                return rc;
            }
            p = pq_ring_lay_out(r, t, lens, n, pos_out);
        }
    }

    /*
     * The records must lie where the region has pages (pq_ring_reserve.c).
     * Only the epoch's first lap can reach unbacked bytes: there a
     * position's offset is pos - start, and claims never pass the level's
     * extent, so once tail has gone round everything is backed and
     * reserved_cache is UINT64_MAX. One comparison on the hot path; a
     * record laid out after a padding record at the start of the region
     * lies below t, which is backed.
     */
    if (__builtin_expect(p > r->reserved_cache, 0) && (rc = pq_ring_backed_to(r, p)) <= 0) {
        pthread_mutex_unlock(&c->claim_lock);
        return rc < 0 ? rc : -ENOBUFS;
    }

    /* Announce the claim for EOWNERDEAD recovery (see pq_ring_lock);
     * release: a recovering holder that reads claim_tail sees claim_msgs. */
    const uint64_t msgs = atomic_load_explicit(&c->tail_msgs, memory_order_relaxed);
    const uint64_t new_tail = p;
    atomic_store_explicit(&c->claim_msgs, msgs, memory_order_relaxed);
    atomic_store_explicit(&c->claim_tail, new_tail, memory_order_release);
    PQ_FAULT_POINT(PQ_FAULT_IN_CLAIM_LOCK);

    /* Write the headers. Consumers cannot look at them until the tail
     * store below, but a consumer holding a stale head may read these
     * words concurrently, hence atomic (relaxed) stores. */
    p = t;
    for (uint32_t i = 0; i < n; i++) {
        if (pos_out[i] != p) {
            pq_record_header *pad = pq_ring_header_at(r, p);
            uint64_t pad_len = pos_out[i] - p - PQ_RECORD_HEADER;
            atomic_store_explicit(&pad->owner, 0, memory_order_relaxed);
            atomic_store_explicit(&pad->ctl, pq_record_ctl(p, (uint32_t)pad_len, 0, PQ_REC_PADDING),
                                  memory_order_relaxed);
        }
        pq_record_header *rec = pq_ring_header_at(r, pos_out[i]);
        atomic_store_explicit(&rec->owner, owner, memory_order_relaxed);
        atomic_store_explicit(&rec->ctl, pq_record_ctl(pos_out[i], lens[i], 0, PQ_REC_CLAIMED),
                              memory_order_relaxed);
        p = pos_out[i] + pq_ring_record_size(lens[i]);
    }
    atomic_store_explicit(&c->tail_msgs, msgs + n, memory_order_relaxed);
    /* release: publishes the headers written above to consumers, who
     * load tail with acquire before reading any header below it. */
    atomic_store_explicit(&c->tail, new_tail, memory_order_release);
    atomic_store_explicit(&c->claim_tail, 0, memory_order_release);
    pthread_mutex_unlock(&c->claim_lock);
    PQ_FAULT_POINT(PQ_FAULT_AFTER_CLAIM);
    return 0;
}

void pq_ring_commit(pq_ring *r, uint64_t pos, uint8_t type)
{
    PQ_FAULT_POINT(PQ_FAULT_BEFORE_COMMIT);
    pq_record_header *rec = pq_ring_header_at(r, pos);
    uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_relaxed);
    /* release: the payload bytes written before this store are visible to
     * a consumer that loads the header with acquire and sees COMMITTED. */
    atomic_store_explicit(&rec->ctl, pq_record_ctl(pos, pq_ctl_len(ctl), type, PQ_REC_COMMITTED),
                          memory_order_release);
}

void pq_ring_notify_readable(pq_ring *r, uint32_t n)
{
    pq_event_notify(&r->ctl->readable, n > INT32_MAX ? INT32_MAX : (int)n);
}

/*
 * A reader read ring memory at the levels `levels` (bits) and then found
 * head moved past where it read: if a level >= 1 among them is dead, a
 * trim may have emptied it meanwhile, and the read of the hole gave it a
 * page (a shared tmpfs mapping has no zero page). Mark them, so that a
 * trim gives the page back (see pq_ring_trim, which clears a mark before
 * it empties the region). release: the mark comes after the read (and its
 * page). Only when a read turned out stale.
 */
static inline void pq_ring_mark_read(pq_ring_ctl *c, uint64_t levels)
{
    levels &= ~1ull;
    if (levels != 0)
        atomic_fetch_or_explicit(&c->dirty_levels, levels, memory_order_release);
}

/* The same for a read of level `level` at head position h, once done:
 * marks it if head has moved (pq_ring_readable, pq_ring_repair_head). */
void pq_ring_mark_if_moved(pq_ring_ctl *c, uint64_t h, unsigned level)
{
    if (level != 0 && atomic_load_explicit(&c->head, memory_order_acquire) != h)
        pq_ring_mark_read(c, 1ull << level);
}

/* The levels a view's peek may have read: those its rd_find passed since
 * its last consume that won, and the cached one. */
static inline void pq_ring_mark_view_read(pq_ring *r)
{
    pq_ring_mark_read(r->ctl, r->rd_levels | (1ull << r->rd_level));
    r->rd_levels = 0;
}

/* Did head move since we read h? Then what we saw may be stale (and a
 * stale read is marked: pq_ring_mark_read). */
__attribute__((noinline, cold)) static int pq_ring_stale_or_corrupt(pq_ring *r, uint64_t h)
{
    if (atomic_load_explicit(&r->ctl->head, memory_order_acquire) == h)
        return PQ_ERR_CORRUPT;
    pq_ring_mark_view_read(r);
    return -ESTALE;
}

/*
 * The slow half of a reader's mapping of position p: look its epoch up in
 * the table (as of rd_seen) and cache it in rd_*. Asks for a trim when the
 * reader leaves a grown epoch (its region may be given back).
 */
/* Load epoch rd_seen's start and size into rd_cur_*: 0, or PQ_ERR_CORRUPT
 * (then no tail passes the check in pq_ring_peek). */
static int pq_ring_rd_current(pq_ring *r)
{
    pq_ring_epoch *e = &r->ctl->epochs[r->rd_seen % PQ_RING_EPOCHS];
    /* relaxed: loaded after ctl->epoch (acquire), whose release store
     * published the entry. */
    const uint64_t start = atomic_load_explicit(&e->start, memory_order_relaxed);
    const uint64_t level = atomic_load_explicit(&e->level, memory_order_relaxed);
    if (level >= r->nlevels || (start & (PQ_RECORD_ALIGN - 1)) != 0) {
        r->rd_cur_start = 0;
        r->rd_cur_cap = 0;
        return PQ_ERR_CORRUPT;
    }
    r->rd_cur_start = start;
    r->rd_cur_cap = r->capacity << level;
    return 0;
}

__attribute__((noinline, cold)) static int pq_ring_rd_find(pq_ring *r, uint64_t p)
{
    pq_ring_where w;
    int rc = pq_ring_epoch_find(r, r->rd_seen, p, &w);
    if (rc < 0)
        return rc;
    if (r->rd_level != 0 && w.start != r->rd_start)
        r->trim_wanted = 1;
    r->rd_levels |= (1ull << r->rd_level) | (1ull << w.level);
    r->rd_start = w.start;
    r->rd_end = w.end;
    r->rd_cap = w.cap;
    r->rd_level = w.level;
    r->rd_base = w.base;
    return 0;
}

int pq_ring_peek(pq_ring *r, pq_ring_record *out, uint32_t max, pq_ring_batch *b)
{
    pq_ring_ctl *c = r->ctl;
    /* acquire on head: pairs with the CAS of the consumer that moved it. */
    uint64_t h = atomic_load_explicit(&c->head, memory_order_acquire);
    PQ_FAULT_POINT(PQ_FAULT_PEEK_LOADED_HEAD);
    /* acquire on tail: pairs with the producer's release store, so every
     * header below tail is the one its producer wrote. A cached tail that
     * is still ahead of head was loaded the same way and covers fewer
     * records; reload only when it is used up. */
    uint64_t t = r->tail_cache;
    uint64_t p = h;

    b->head = h;
    b->count = 0;
    b->skipped = 0;
    if ((h & (PQ_RECORD_ALIGN - 1)) != 0)
        return pq_ring_stale_or_corrupt(r, h);
    if (t - h > r->span)
        t = h; /* the cache is behind head: used up, reload below */

    for (;;) {
        if (p == t) {
            if (b->count == max || t == (r->tail_cache = atomic_load_explicit(
                                             &c->tail, memory_order_acquire)))
                break;
            t = r->tail_cache;
            /* t - p: a tail behind the cached one (only a corrupt
             * segment) would leave p past t and the walk unbounded. */
            if (t - h > r->span || t - p > r->span || (t & (PQ_RECORD_ALIGN - 1)) != 0)
                return pq_ring_stale_or_corrupt(r, h);
            /* The epochs of every position below this tail: loaded after
             * it (ordered by its acquire; the claim that published an
             * epoch stored ctl->epoch before its tail). A new epoch ends
             * the cached one, which may have been open-ended.
             * acquire: pairs with the release store of ctl->epoch in
             * pq_ring_grow / pq_ring_trim. The epoch seen may be newer
             * than this tail (a grow or trim after our tail load), and
             * then the tail's acquire does not order its entry. */
            uint64_t seen = atomic_load_explicit(&c->epoch, memory_order_acquire);
            if (__builtin_expect(seen != r->rd_seen, 0)) {
                r->rd_seen = seen;
                r->rd_end = r->rd_start; /* look up again */
                (void)pq_ring_rd_current(r);
            }
            /* Claims keep the tail within the size of its epoch of the
             * later of head and the epoch's start. */
            uint64_t cur_start = r->rd_cur_start, cur_cap = r->rd_cur_cap;
            if (__builtin_expect(t - cur_start >= PQ_POS_HALF, 0)) {
                /* The epoch seen starts after t: producers claimed past t
                 * and one grew (or a trim started over) between our tail
                 * and epoch loads. Not damage: t lies in an older epoch;
                 * bound it by that one (a damaged table still fails). */
                pq_ring_where w;
                if (pq_ring_epoch_find(r, seen, t, &w) < 0)
                    return pq_ring_stale_or_corrupt(r, h);
                cur_start = w.start;
                cur_cap = w.cap;
            }
            if (t - pq_pos_max(h, cur_start) > cur_cap)
                return pq_ring_stale_or_corrupt(r, h);
        }
        if (b->count == max)
            break;
        /* One comparison while p stays in the cached epoch. */
        if (__builtin_expect(p - r->rd_start >= r->rd_end - r->rd_start, 0) &&
            pq_ring_rd_find(r, p) < 0)
            return pq_ring_stale_or_corrupt(r, h);
        uint64_t off = (p - r->rd_start) & (r->rd_cap - 1);
        pq_record_header *rec = (pq_record_header *)(r->rd_base + off);
        /* acquire: pairs with pq_ring_commit's release, making the payload
         * visible once we see COMMITTED. */
        uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
        uint64_t len = pq_ctl_len(ctl);
        uint64_t size = pq_ring_record_size(len);

        /* Bound everything by the region and the epoch before using it. */
        if (pq_ctl_tag(ctl) != pq_record_tag(p) || size > r->rd_cap - off || size > t - p ||
            size > r->rd_end - p)
            return pq_ring_stale_or_corrupt(r, h);

        switch (pq_ctl_state(ctl)) {
        case PQ_REC_COMMITTED:
            out[b->count].pos = p;
            out[b->count].payload = (const uint8_t *)rec + PQ_RECORD_HEADER;
            out[b->count].len = (uint32_t)len;
            out[b->count].type = pq_ctl_type(ctl);
            b->count++;
            break;
        case PQ_REC_ABANDONED:
            b->skipped++;
            break;
        case PQ_REC_PADDING:
            break;
        case PQ_REC_CLAIMED:
            goto done;
        default:
            return pq_ring_stale_or_corrupt(r, h);
        }
        p += size;
    }
done:
    b->next = p;
    if (p == h)
        return h == t ? -EAGAIN : -EINPROGRESS;
    return (int)b->count;
}

/*
 * head and head_msgs move in one double-width CAS where the CPU has one
 * (x86-64 cmpxchg16b; others with a 16-byte __sync CAS): a consumer killed
 * right after it took records then cannot leave the message count behind
 * head. With two steps, a SIGKILL between them left qsize() one too high
 * for good and took one message off maxsize for every such death (at
 * maxsize=1 the queue stayed "full" forever). The pair is 16-aligned (see
 * pq_ring.h); other code reads either half with plain 64-bit loads
 * (pq_cas_pair: pq_cas.h).
 */
/* A consumer's CAS on head failed: another consumer moved head past what
 * we read, which is a stale read (pq_ring_mark_read). */
__attribute__((noinline, cold)) static int pq_ring_lost_race(pq_ring *r)
{
    pq_ring_mark_view_read(r);
    return -EAGAIN;
}

static inline int pq_ring_consume_cas(pq_ring *r, const pq_ring_batch *b)
{
    pq_ring_ctl *c = r->ctl;
    uint64_t passed = b->count + b->skipped;

    /*
     * The CAS validates the optimistic copy: head is monotonic, so if it
     * still equals b->head no other consumer took these records and no
     * producer can have reused their bytes (room is measured from head).
     * release: our reads of the payloads happen before a producer that
     * sees the new head reuses the space. acquire: for what we read next.
     * The same CAS counts the messages out (head_msgs): a reader that sees
     * the new count also sees a tail_msgs that covers it (this consumer
     * read tail with acquire), so depth never goes negative.
     */
#if PQ_HEAD_PAIR_CAS
    /* head_msgs only ever changes together with head, so if head is
     * still b->head, the count read after it is the one that goes with it;
     * if head moved, the CAS fails on head whatever the count. */
    uint64_t msgs = atomic_load_explicit(&c->head_msgs, memory_order_acquire);
    for (;;) {
        uint64_t h = b->head, m = msgs;
        if (pq_cas_pair(&c->head, &h, &m, b->next, msgs + passed))
            break;
        if (h != b->head)
            return pq_ring_lost_race(r);
        msgs = m; /* same head, other count: only a two-step writer (none) */
    }
    PQ_FAULT_POINT(PQ_FAULT_AFTER_CONSUME);
#else
    /* No double-width CAS: two steps. A consumer killed between them
     * leaves head_msgs short by what it took (docs/design.md). */
    uint64_t expected = b->head;
    if (!atomic_compare_exchange_strong_explicit(&c->head, &expected, b->next,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return pq_ring_lost_race(r);
    PQ_FAULT_POINT(PQ_FAULT_AFTER_CONSUME);
    /* head_msgs only feeds maxsize checks and statistics, where a
     * briefly low value errs on the side of "full". */
    if (passed != 0)
        atomic_fetch_add_explicit(&c->head_msgs, passed, memory_order_release);
#endif
    r->rd_levels = 0; /* what it read was current: nothing to mark */
    /* Abandoned records are counted when head passes them (exactly once:
     * by the consumer whose CAS won), after head_msgs, so that "dequeued"
     * (passed - dropped - abandoned) never goes negative. A consumer
     * killed just before this leaves the statistic one short, nothing
     * else. */
    if (b->skipped != 0)
        pq_ring_count(r, PQ_COUNT_ABANDONED, b->skipped);
    /* Emptied in a grown epoch (the one read from, or the current one: a
     * grow whose first chunk could not be backed leaves an empty one): its
     * region can be given back and the ring go back to level 0 (the
     * binding calls pq_ring_trim). Emptied with a level still marked as
     * having pages: a producer populated it, or a stale reader read it,
     * while a trim emptied it (pq_ring_reserve, pq_ring_mark_read), and
     * no trim has taken the mark since - in level 0 no take would ask
     * again, and the pages stayed until the queue grew or was removed.
     * relaxed: a hint, read only when the queue empties; the trim reads
     * it again under the lock. */
    if (b->next == r->tail_cache &&
        __builtin_expect(r->rd_level != 0 || r->rd_cur_cap != r->capacity ||
                             (atomic_load_explicit(&c->dirty_levels, memory_order_relaxed) & ~1ull) != 0,
                         0))
        r->trim_wanted = 1;
    pq_event_notify(&c->writable, INT32_MAX);
    return 0;
}

void pq_ring_peek_abandon(pq_ring *r, const pq_ring_batch *b)
{
    /* The fence: the caller's plain reads of the payloads (its copies, a
     * batch's earlier ones done) are ordered before the load of head
     * below, so a head still equal was read after them; and head is a
     * counter that only grows: equal means nothing the peek read was
     * behind head then, so no trim had emptied it. acquire on the load:
     * pairs with the CAS of the consumer that moved head. A head that
     * moved: the read may have been stale, and is marked. */
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&r->ctl->head, memory_order_acquire) != b->head)
        pq_ring_mark_view_read(r);
}

int pq_ring_consume(pq_ring *r, const pq_ring_batch *b)
{
    PQ_FAULT_POINT(PQ_FAULT_AFTER_PEEK);
    return pq_ring_consume_cas(r, b);
}

/* pq_ring_slots.c: claim a slot for the process `owner` in this view (or
 * find none); resets the view's take state. */
extern pq_ring_slot *pq_ring_slot_claim(pq_ring *r, uint64_t owner);

/* This process's slot in this view, NULL when it has none. A forked child
 * finds its parent's slot in the view (pq_proc_forks moved) and claims its
 * own. */
static inline pq_ring_slot *pq_ring_own_slot(pq_ring *r)
{
    if (PQ_LIKELY(r->slot_owner != 0 && r->slot_forks == pq_proc_forks))
        return r->slot >= 0 ? &r->ctl->slots[r->slot] : NULL;
    pq_proc_id self;
    if (pq_proc_self(&self) < 0)
        return NULL; /* identity unknown: no accounting this time */
    return pq_ring_slot_claim(r, pq_proc_pack(&self));
}

int pq_ring_take(pq_ring *r, const pq_ring_batch *b)
{
    PQ_FAULT_POINT(PQ_FAULT_AFTER_PEEK);
    pq_ring_slot *s = b->count != 0 ? pq_ring_own_slot(r) : NULL;
    if (s == NULL)
        return pq_ring_consume_cas(r, b);
    /*
     * Announce the batch in our slot, then CAS (docs/design.md, "Consumers
     * that die holding messages"). A reaper counts, for a dead owner,
     * held + (batch count if head has passed taking_next): whatever store
     * we die after, that is what we took and did not hand over, except
     * between the announcement and a CAS that fails (or the clear after
     * it), where a batch another consumer took is counted as ours.
     *
     * Order: the reaper only looks at a slot once its owner is dead, so it
     * sees a prefix of these stores in program order. release keeps them
     * in that order (compiler and CPU; plain stores on x86), and keeps
     * them before the CAS; the CAS (a full barrier) then publishes them:
     * whoever sees head at or past taking_next by way of our CAS (or a
     * later one on head) also sees the announcement.
     */
    const uint64_t held = (uint64_t)r->held << PQ_SLOT_HELD_SHIFT;
    if (r->held != 0) /* an earlier batch of this operation: its count is in held now */
        atomic_store_explicit(&s->taking, held, memory_order_release);
    atomic_store_explicit(&s->taking_head, b->head, memory_order_release);
    atomic_store_explicit(&s->taking_next, b->next, memory_order_release);
    atomic_store_explicit(&s->taking, held | b->count, memory_order_release);
    int rc = pq_ring_consume_cas(r, b);
    if (rc != 0) {
        atomic_store_explicit(&s->taking, held, memory_order_release);
        return rc;
    }
    uint64_t sum = (uint64_t)r->held + b->count;
    r->held = sum > UINT32_MAX ? UINT32_MAX : (uint32_t)sum;
    return 0;
}

int pq_ring_repair_head(pq_ring *r)
{
    pq_ring_ctl *c = r->ctl;
    uint64_t h = atomic_load_explicit(&c->head, memory_order_acquire);
    uint64_t t = atomic_load_explicit(&c->tail, memory_order_acquire);
    int32_t pid;
    uint64_t start32;

    /* acquire: after tail, the epochs of every position below it. */
    uint64_t n = atomic_load_explicit(&c->epoch, memory_order_acquire);
    pq_ring_where w;

    /* A misaligned head (a corrupt segment) would put the header across
     * the end of the data area: nothing to repair there. */
    if (h == t || t - h > r->span || (h & (PQ_RECORD_ALIGN - 1)) != 0 ||
        pq_ring_epoch_find(r, n, h, &w) < 0)
        return 0;
    pq_record_header *rec = (pq_record_header *)(w.base + ((h - w.start) & (w.cap - 1)));
    uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
    if (pq_ctl_tag(ctl) != pq_record_tag(h) || pq_ctl_state(ctl) != PQ_REC_CLAIMED) {
        pq_ring_mark_if_moved(c, h, w.level); /* a stale read of a dead level: marked */
        return 0;
    }
    pq_proc_unpack(atomic_load_explicit(&rec->owner, memory_order_relaxed), &pid, &start32);
    int alive = pq_proc_alive(pid, start32, 1);
    if (alive != 0) {
        pq_ring_mark_if_moved(c, h, w.level);
        return alive < 0 ? alive : 0;
    }
    /*
     * The owner is gone: its message can never be committed. The CAS only
     * succeeds if the header still holds the same ctl word, but the tag
     * only tells positions 1 MiB apart, so a header of a later lap can
     * look the same: if another repairer marked this record while we read
     * /proc, consumers passed it and producers lapped the ring, the CAS
     * would abandon a live producer's record. Head cannot pass a CLAIMED
     * record, so while head is still h the record is the one we checked:
     * re-check it right before the CAS (that leaves a window of a few
     * instructions instead of the whole liveness check).
     */
    if (atomic_load_explicit(&c->head, memory_order_acquire) != h) {
        pq_ring_mark_if_moved(c, h, w.level);
        return 0;
    }
    uint64_t abandoned = pq_record_ctl(h, pq_ctl_len(ctl), 0, PQ_REC_ABANDONED);
    if (!atomic_compare_exchange_strong_explicit(&rec->ctl, &ctl, abandoned,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return 0;
    /* PQ_COUNT_ABANDONED is counted by pq_ring_consume when head passes it. */
    pq_ring_notify_readable(r, INT32_MAX);
    return 1;
}
