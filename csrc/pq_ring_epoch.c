/* pq_ring_epoch.c - epochs of the record ring: where a position lies,
 * growth into a bigger region when the ring is full, and trimming (back to
 * level 0, emptied regions given back). See pq_ring.h and docs/design.md,
 * "Unbounded queues". */
#define _GNU_SOURCE
#include "pq_ring.h"

#include <sys/mman.h>

#include "pq_claim_lock.h"
#include "pq_fault.h"
#include "pq_wait.h"

/* How long pq_ring_trim waits for the claim lock. */
#define PQ_RING_TRIM_WAIT_NS (20 * 1000 * 1000)

int pq_ring_epoch_find(const pq_ring *r, uint64_t n, uint64_t p, pq_ring_where *w)
{
    const pq_ring_ctl *c = r->ctl;
    uint64_t end = 0;
    /* Bounded: PQ_RING_EPOCHS entries, newest first; each epoch starts at
     * or after the one before it (modulo 2^64, as positions). */
    for (unsigned i = 0; i < PQ_RING_EPOCHS; i++) {
        const uint64_t k = n - i;
        pq_ring_epoch *e = (pq_ring_epoch *)&c->epochs[k % PQ_RING_EPOCHS];
        /* relaxed: the caller loaded tail (or ctl->epoch) with acquire
         * after the claim that published epoch n stored these entries, and
         * a published entry does not change while its epoch may be live. */
        const uint64_t start = atomic_load_explicit(&e->start, memory_order_relaxed);
        const uint64_t level = atomic_load_explicit(&e->level, memory_order_relaxed);
        if (i == 0)
            end = start + PQ_POS_HALF;
        if (level >= r->nlevels || end - start >= PQ_POS_HALF + (i == 0) ||
            (start & (PQ_RECORD_ALIGN - 1)) != 0)
            return PQ_ERR_CORRUPT;
        if (p - start < end - start) {
            w->n = k;
            w->start = start;
            w->end = end;
            w->level = (unsigned)level;
            w->cap = r->capacity << level;
            w->base = r->data + pq_ring_level_offset(r->capacity, (unsigned)level);
            return 0;
        }
        end = start;
        if (k == 0)
            break; /* the first epoch: p is before the ring's history */
    }
    return -ESTALE;
}

/* The extent word of a level (see pq_ring_ctl.level_reserved). */
static inline uint64_t pq_extent_word(uint64_t n, uint64_t bytes)
{
    return (n << 32) | (bytes / PQ_RING_EXTENT_UNIT);
}

int pq_ring_epoch_load(pq_ring *r, uint64_t n)
{
    pq_ring_ctl *c = r->ctl;
    pq_ring_epoch *e = &c->epochs[n % PQ_RING_EPOCHS];
    /* relaxed: written under the claim lock, which we hold. */
    const uint64_t start = atomic_load_explicit(&e->start, memory_order_relaxed);
    const uint64_t level = atomic_load_explicit(&e->level, memory_order_relaxed);
    if (level >= r->nlevels || (start & (PQ_RECORD_ALIGN - 1)) != 0)
        return PQ_ERR_CORRUPT;
    const uint64_t cap = r->capacity << level;
    /* acquire: pairs with the release in pq_ring_reserve (the pages were
     * given before the extent was published). */
    const uint64_t word = atomic_load_explicit(&c->level_reserved[level], memory_order_acquire);
    /* A grow writes the level's tag before it publishes the epoch: another
     * tag on the current epoch's level is a corrupt segment (trusting it
     * would write to pages that may have none behind them). */
    if (level != 0 && (word >> 32) != (uint32_t)n)
        return PQ_ERR_CORRUPT;
    uint64_t extent = (word & 0xffffffffu) * PQ_RING_EXTENT_UNIT;
    if (extent > cap)
        extent = cap;
    r->ep_n = n;
    r->ep_start = start;
    r->ep_cap = cap;
    r->ep_level = (unsigned)level;
    r->ep_base = r->data + pq_ring_level_offset(r->capacity, (unsigned)level);
    r->reserved_cache = extent >= cap ? UINT64_MAX : start + extent;
    return 0;
}

int pq_ring_grow(pq_ring *r, uint64_t t)
{
    pq_ring_ctl *c = r->ctl;
    if (r->ep_level + 1 >= r->nlevels)
        return -EAGAIN;
    const uint64_t n1 = r->ep_n + 1;
    const unsigned level = r->ep_level + 1;
    /*
     * The entry n1 % PQ_RING_EPOCHS held epoch n1 - PQ_RING_EPOCHS, which
     * is dead: the live epochs (from head's to the current one) have
     * strictly increasing levels (a grow goes one level up, a trim starts
     * over at level 0 only when the queue is empty), so there are at most
     * nlevels <= PQ_RING_LEVELS < PQ_RING_EPOCHS of them.
     *
     * relaxed stores: all published by the release store of ctl->epoch
     * below (and of tail after it, for readers). A holder that dies before
     * that store leaves an entry nobody reads; one that dies after it
     * leaves an empty epoch that the next claim fills.
     */
    atomic_store_explicit(&c->level_reserved[level], pq_extent_word(n1, 0), memory_order_relaxed);
    atomic_fetch_or_explicit(&c->dirty_levels, 1ull << level, memory_order_relaxed);
    atomic_store_explicit(&c->epochs[n1 % PQ_RING_EPOCHS].start, t, memory_order_relaxed);
    atomic_store_explicit(&c->epochs[n1 % PQ_RING_EPOCHS].level, level, memory_order_relaxed);
    atomic_store_explicit(&c->epoch, n1, memory_order_release);
    PQ_FAULT_POINT(PQ_FAULT_IN_GROW);
    return pq_ring_epoch_load(r, n1);
}

int pq_ring_trim(pq_ring *r)
{
    pq_ring_ctl *c = r->ctl;
    const pq_claim_words w = {&c->tail, &c->tail_msgs, &c->claim_tail, &c->claim_msgs,
                              &c->dirty_levels, pq_ring_grown_levels(r)};
    /* A short bounded wait: a producer holds the lock for a claim (or a
     * trim) only; one that is stopped inside it costs this trim, not a
     * hang (the next take that wants a trim tries again). */
    int rc = pq_claim_lock_until(&c->claim_lock, &w, pq_monotonic_ns() + PQ_RING_TRIM_WAIT_NS);
    if (rc == -EBUSY || rc == -ETIMEDOUT)
        return 0;
    if (rc < 0)
        return rc;

    /* relaxed: epoch and tail are only written under the claim lock. */
    uint64_t n = atomic_load_explicit(&c->epoch, memory_order_relaxed);
    const uint64_t t = atomic_load_explicit(&c->tail, memory_order_relaxed);
    /* acquire: pairs with the consumers' CAS, so the epochs they passed
     * are done with (a stale reader still copying out fails its CAS). */
    const uint64_t h = atomic_load_explicit(&c->head, memory_order_acquire);
    pq_ring_where cur;
    rc = pq_ring_epoch_find(r, n, t, &cur);
    if (rc < 0 || cur.n != n || t - h > r->span) {
        pthread_mutex_unlock(&c->claim_lock);
        return PQ_ERR_CORRUPT;
    }

    /* The levels of the live epochs: the current one and the older ones
     * that end after head (epoch k ends where k + 1 starts). Bounded by
     * the table; an entry out of range or out of order is a corrupt
     * segment. */
    uint64_t live = 1ull << cur.level;
    uint64_t end = cur.start;
    /* end - h - 1 < 2^63: end after head (modulo 2^64, as positions). */
    for (uint64_t k = n; k > 0 && n - k < PQ_RING_EPOCHS - 1 && end - h - 1 < PQ_POS_HALF; k--) {
        pq_ring_epoch *e = &c->epochs[(k - 1) % PQ_RING_EPOCHS];
        /* relaxed: written under the claim lock, which we hold. */
        const uint64_t start = atomic_load_explicit(&e->start, memory_order_relaxed);
        const uint64_t level = atomic_load_explicit(&e->level, memory_order_relaxed);
        if (level >= r->nlevels || end - start >= PQ_POS_HALF) {
            pthread_mutex_unlock(&c->claim_lock);
            return PQ_ERR_CORRUPT;
        }
        live |= 1ull << level;
        end = start;
    }

    if (h == t && cur.level != 0) {
        /* Empty in a grown epoch: start over in level 0's region (never
         * emptied, so its extent carries over under the new tag). */
        const uint64_t n1 = n + 1;
        const uint64_t w0 = atomic_load_explicit(&c->level_reserved[0], memory_order_relaxed);
        atomic_store_explicit(&c->level_reserved[0], (n1 << 32) | (w0 & 0xffffffffu),
                              memory_order_relaxed);
        atomic_store_explicit(&c->epochs[n1 % PQ_RING_EPOCHS].start, t, memory_order_relaxed);
        atomic_store_explicit(&c->epochs[n1 % PQ_RING_EPOCHS].level, 0, memory_order_relaxed);
        /* release: publishes the entry (see pq_ring_grow). */
        atomic_store_explicit(&c->epoch, n1, memory_order_release);
        n = n1;
        live = 1;
    }

    /*
     * Empty the regions of dead levels. Under the claim lock: a region is
     * only used again by a grow, which takes the lock, so no new claim
     * lands there meanwhile. Two kinds of late visitor may still give a
     * dead region pages: a producer whose populate of its (old) epoch's
     * chunk is still running (pq_ring_reserve), and a reader with a
     * stale head, whose read of a hole allocates a page (tmpfs has no
     * shared zero page) before it finds head moved. Each marks the level
     * after its pages exist (pq_ring_reserve; for readers
     * pq_ring_mark_read, on every path where a read turns out stale: a
     * lost CAS, a peek's -ESTALE, the wait's check, the repair).
     * So the bit is cleared BEFORE the region is emptied: a mark that
     * comes after the clear survives it, for the next trim (a take that
     * empties the queue asks for one while a level >= 1 is marked); a
     * mark that came before it belongs to pages that existed before the
     * madvise, which removes them. (Clearing after the madvise lost a
     * mark made in between, with the pages populated after the madvise:
     * up to a chunk stayed backed, found in tests/test_shm_full.py.)
     * acq_rel: pairs with the marks (acq_rel RMWs on the same word): a
     * visitor whose mark comes after this clear sees the epoch stored
     * above and trims; one whose mark comes before has its pages made
     * before the madvise below. A holder that dies between the clear and
     * the madvise leaves the lock to a next holder that marks every level
     * (pq_claim_lock.c: the recovery of a dead holder).
     */
    const uint64_t dirty = atomic_load_explicit(&c->dirty_levels, memory_order_relaxed);
    int emptied = 0;
    rc = 0;
    for (unsigned level = 1; level < r->nlevels; level++) {
        if (!(dirty & (1ull << level)) || (live & (1ull << level)))
            continue;
        atomic_fetch_and_explicit(&c->dirty_levels, ~(1ull << level), memory_order_acq_rel);
        PQ_FAULT_POINT(PQ_FAULT_TRIM_CLEARED);
        uint8_t *base = r->data + pq_ring_level_offset(r->capacity, level);
        if (madvise(base, (size_t)(r->capacity << level), MADV_REMOVE) != 0) {
            rc = -errno;
            /* Not emptied: still marked, for the next trim. */
            atomic_fetch_or_explicit(&c->dirty_levels, 1ull << level, memory_order_relaxed);
            continue;
        }
        PQ_FAULT_POINT(PQ_FAULT_TRIM_EMPTIED);
        emptied++;
    }
    pthread_mutex_unlock(&c->claim_lock);
    return rc < 0 ? rc : emptied;
}
