/* pq_wq_dedup.c - the dedup table of a work queue. See pq_wq_dedup.h.
 *
 * Memory orders: every call runs under the work queue's lock, which orders
 * one holder's stores before the next holder's loads; the orders below are
 * for a holder that dies half way (SIGKILL): a release store keeps the
 * stores before it from being moved after it, so what the next holder
 * finds is a prefix of the change, in program order. */
#include "pq_wq_dedup.h"

#include <string.h>

static inline uint32_t pq_wq_dedup_cells(const pq_wq_dedup_table *t)
{
    return 2 * t->cap;
}

/* The cell a key's probe starts at (Fibonacci hashing of the 64-bit hash). */
static inline uint32_t pq_wq_dedup_home(const pq_wq_dedup_table *t, uint64_t hash)
{
    return (uint32_t)((hash * 0x9E3779B97F4A7C15ull) >> 32) & (pq_wq_dedup_cells(t) - 1);
}

uint64_t pq_wq_dedup_bytes(uint32_t cap)
{
    return pq_align_up((uint64_t)cap * sizeof(pq_wq_dedup) + 2ull * cap * sizeof(uint32_t), 64);
}

void pq_wq_dedup_attach(pq_wq_dedup_table *t, pq_wq_dedup_ctl *ctl, void *base, uint32_t cap,
                        int64_t window_ns)
{
    t->ctl = ctl;
    t->ring = base;
    t->index = (_Atomic uint32_t *)((uint8_t *)base + (uint64_t)cap * sizeof(pq_wq_dedup));
    t->cap = cap;
    t->window_ns = window_ns;
}

/* Put ring index ri into the index (there is always an empty cell: at
 * most cap of 2 * cap are used). */
static void pq_wq_dedup_index_put(pq_wq_dedup_table *t, uint32_t ri)
{
    uint32_t mask = pq_wq_dedup_cells(t) - 1;
    uint32_t i = pq_wq_dedup_home(t, atomic_load_explicit(&t->ring[ri].hash, memory_order_relaxed));
    for (uint32_t n = 0; n <= mask; n++, i = (i + 1) & mask) {
        if (atomic_load_explicit(&t->index[i], memory_order_relaxed) == 0) {
            /* release: after `dirty` (pq_wq_dedup_begin) for a holder that dies */
            atomic_store_explicit(&t->index[i], ri + 1, memory_order_release);
            return;
        }
    }
}

/* Take ring index ri out of the index, if it is there: backward-shift
 * deletion (the cells after it that probed past it move up), so a probe
 * can stop at the first empty cell. */
static void pq_wq_dedup_index_drop(pq_wq_dedup_table *t, uint32_t ri)
{
    uint32_t mask = pq_wq_dedup_cells(t) - 1;
    uint32_t i = pq_wq_dedup_home(t, atomic_load_explicit(&t->ring[ri].hash, memory_order_relaxed));
    uint32_t n;
    for (n = 0; n <= mask; n++, i = (i + 1) & mask) {
        uint32_t c = atomic_load_explicit(&t->index[i], memory_order_relaxed);
        if (c == 0)
            return; /* not in the index */
        if (c == ri + 1)
            break;
    }
    if (n > mask)
        return;
    uint32_t j = i;
    for (n = 0; n < mask; n++) {
        j = (j + 1) & mask;
        uint32_t c = atomic_load_explicit(&t->index[j], memory_order_relaxed);
        if (c == 0)
            break;
        uint32_t k = c - 1 < t->cap
                         ? pq_wq_dedup_home(t, atomic_load_explicit(&t->ring[c - 1].hash,
                                                                    memory_order_relaxed))
                         : j;
        /* The entry at j may move to the hole at i unless its home lies
         * cyclically in (i, j]. */
        if (((j - k) & mask) >= ((j - i) & mask)) {
            atomic_store_explicit(&t->index[i], c, memory_order_release);
            i = j;
        }
    }
    atomic_store_explicit(&t->index[i], 0, memory_order_release);
}

/* The index is about to change: a holder that dies before pq_wq_dedup_end
 * leaves `dirty` set for the next one to rebuild. */
static inline void pq_wq_dedup_begin(pq_wq_dedup_table *t)
{
    atomic_store_explicit(&t->ctl->dirty, 1, memory_order_relaxed);
}

static inline void pq_wq_dedup_end(pq_wq_dedup_table *t)
{
    /* release: the index stores before it stay before it */
    atomic_store_explicit(&t->ctl->dirty, 0, memory_order_release);
}

/* Is the ring's [head, tail) a range the ring can hold? */
static int pq_wq_dedup_sane(const pq_wq_dedup_table *t, uint64_t head, uint64_t tail)
{
    return tail >= head && tail - head <= t->cap;
}

/* The index anew from the ring's live entries (bounded by cap). */
static void pq_wq_dedup_rebuild(pq_wq_dedup_table *t, uint64_t head, uint64_t tail, int64_t now)
{
    uint32_t cells = pq_wq_dedup_cells(t);
    for (uint32_t i = 0; i < cells; i++)
        atomic_store_explicit(&t->index[i], 0, memory_order_relaxed);
    for (uint64_t p = head; p < tail; p++) {
        uint32_t ri = (uint32_t)(p & (t->cap - 1));
        if (atomic_load_explicit(&t->ring[ri].expires_ns, memory_order_relaxed) > now)
            pq_wq_dedup_index_put(t, ri);
    }
}

/* Under the lock, before a change: rebuild the index if the last change
 * of it did not finish, then mark this one as begun. 0, PQ_ERR_CORRUPT. */
static int pq_wq_dedup_start(pq_wq_dedup_table *t, int64_t now)
{
    uint64_t head = atomic_load_explicit(&t->ctl->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&t->ctl->tail, memory_order_relaxed);
    if (!pq_wq_dedup_sane(t, head, tail))
        return PQ_ERR_CORRUPT;
    int died = atomic_load_explicit(&t->ctl->dirty, memory_order_relaxed) != 0;
    pq_wq_dedup_begin(t);
    if (died)
        pq_wq_dedup_rebuild(t, head, tail, now);
    return 0;
}

int pq_wq_dedup_expire(pq_wq_dedup_table *t, int64_t now)
{
    if (t->cap == 0)
        return 0;
    int rc = pq_wq_dedup_start(t, now);
    if (rc < 0)
        return rc;
    uint64_t head = atomic_load_explicit(&t->ctl->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&t->ctl->tail, memory_order_relaxed);
    while (head < tail) {
        uint32_t ri = (uint32_t)(head & (t->cap - 1));
        if (atomic_load_explicit(&t->ring[ri].expires_ns, memory_order_relaxed) > now)
            break; /* the oldest is live: so are the rest (one window for all) */
        pq_wq_dedup_index_drop(t, ri);
        head++;
        /* release: its cell is gone before the entry leaves the ring */
        atomic_store_explicit(&t->ctl->head, head, memory_order_release);
    }
    pq_wq_dedup_end(t);
    return 0;
}

const pq_wq_dedup *pq_wq_dedup_find(const pq_wq_dedup_table *t, uint64_t hash, int64_t now)
{
    if (t->cap == 0 || hash == 0)
        return NULL;
    uint32_t mask = pq_wq_dedup_cells(t) - 1;
    uint32_t i = pq_wq_dedup_home(t, hash);
    for (uint32_t n = 0; n <= mask; n++, i = (i + 1) & mask) {
        uint32_t c = atomic_load_explicit(&t->index[i], memory_order_relaxed);
        if (c == 0)
            return NULL;
        if (c - 1 >= t->cap)
            continue; /* a damaged cell: never followed */
        const pq_wq_dedup *e = &t->ring[c - 1];
        if (atomic_load_explicit(&e->hash, memory_order_relaxed) == hash &&
            atomic_load_explicit(&e->expires_ns, memory_order_relaxed) > now)
            return e;
    }
    return NULL;
}

int pq_wq_dedup_room(const pq_wq_dedup_table *t, int64_t *wake_ns)
{
    uint64_t head = atomic_load_explicit(&t->ctl->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&t->ctl->tail, memory_order_relaxed);
    if (tail - head < t->cap)
        return 1;
    if (wake_ns)
        *wake_ns = atomic_load_explicit(&t->ring[head & (t->cap - 1)].expires_ns,
                                        memory_order_relaxed);
    return 0;
}

uint64_t pq_wq_dedup_next(const pq_wq_dedup_table *t)
{
    return atomic_load_explicit(&t->ctl->tail, memory_order_relaxed);
}

static inline int64_t pq_wq_dedup_after(int64_t now, int64_t d)
{
    return d > INT64_MAX - now ? INT64_MAX : now + d;
}

void pq_wq_dedup_add(pq_wq_dedup_table *t, uint64_t hash, uint64_t id, int64_t now)
{
    uint64_t tail = atomic_load_explicit(&t->ctl->tail, memory_order_relaxed);
    uint32_t ri = (uint32_t)(tail & (t->cap - 1));
    pq_wq_dedup *e = &t->ring[ri];
    atomic_store_explicit(&e->hash, hash, memory_order_relaxed);
    atomic_store_explicit(&e->id, id, memory_order_relaxed);
    atomic_store_explicit(&e->expires_ns, pq_wq_dedup_after(now, t->window_ns),
                          memory_order_relaxed);
    /* release: the entry is whole before the ring counts it */
    atomic_store_explicit(&t->ctl->tail, tail + 1, memory_order_release);
    pq_wq_dedup_begin(t);
    pq_wq_dedup_index_put(t, ri);
    pq_wq_dedup_end(t);
}

void pq_wq_dedup_give_back(pq_wq_dedup_table *t, uint64_t pos, uint64_t id, int64_t now)
{
    if (t->cap == 0 || pq_wq_dedup_start(t, now) < 0)
        return;
    uint64_t head = atomic_load_explicit(&t->ctl->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&t->ctl->tail, memory_order_relaxed);
    uint32_t ri = (uint32_t)(pos & (t->cap - 1));
    if (pos >= head && pos < tail && atomic_load_explicit(&t->ring[ri].id, memory_order_relaxed) == id) {
        pq_wq_dedup_index_drop(t, ri);
        /* It stays in the ring (in put order) until it reaches the head. */
        atomic_store_explicit(&t->ring[ri].expires_ns, now, memory_order_relaxed);
    }
    pq_wq_dedup_end(t);
}

uint64_t pq_wq_dedup_used(const pq_wq_dedup_table *t)
{
    uint64_t head = atomic_load_explicit(&t->ctl->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&t->ctl->tail, memory_order_relaxed);
    return tail >= head ? tail - head : 0;
}
