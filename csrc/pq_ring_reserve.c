/* pq_ring_reserve.c - back the data area of a lazily reserved queue
 * segment with memory, a chunk at a time, without ever touching a page
 * that the memory behind /dev/shm cannot provide (that write would be a
 * SIGBUS). See pq_ring.h and docs/design.md, "Footprint". */
#define _GNU_SOURCE
#include "pq_ring.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* Pages of [addr, addr + len) of a shared mapping, allocated now: 0, or
 * -ENOSPC when the filesystem behind it has no room (the kernel says
 * EFAULT: "the access would have been a SIGBUS"; ENOMEM likewise), or
 * -EOPNOTSUPP when the kernel does not know MADV_POPULATE_WRITE. */
static int pq_populate(uint8_t *addr, uint64_t len)
{
    if (madvise(addr, (size_t)len, MADV_POPULATE_WRITE) == 0)
        return 0;
    if (errno == EFAULT || errno == ENOMEM || errno == ENOSPC)
        return -ENOSPC;
    if (errno == EINVAL)
        return -EOPNOTSUPP;
    return -errno;
}

int pq_ring_reserve(pq_ring *r, uint64_t need)
{
    pq_ring_ctl *c = r->ctl;
    const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    const uint64_t cap = r->ep_cap;
    const unsigned level = r->ep_level;
    _Atomic uint64_t *extent_word = &c->level_reserved[level];
    /* acquire: pairs with the release below of whoever backed it. */
    uint64_t word = atomic_load_explicit(extent_word, memory_order_acquire);

    if (r->ep_n == UINT64_MAX || level >= r->nlevels)
        return 0; /* no epoch loaded yet: the next claim loads one */
    /* Another epoch took the level (after a trim and a grow): this view's
     * claim will load the current epoch and ask again. */
    if (level != 0 && (word >> 32) != (uint32_t)r->ep_n)
        return 0;
    uint64_t backed = (word & 0xffffffffu) * PQ_RING_EXTENT_UNIT;
    if (need > cap)
        need = cap;
    if (need > backed) {
        /* From the page that holds the first unbacked byte, to a whole
         * chunk (region offsets: regions start on page boundaries). */
        const uint64_t from = backed & ~(page - 1);
        uint64_t want = (need + PQ_RING_RESERVE_CHUNK - 1) & ~((uint64_t)PQ_RING_RESERVE_CHUNK - 1);
        if (want > cap)
            want = cap;
        /* Levels >= 1: a trim may empty the region while we populate it
         * (the queue drained and went back to level 0 meanwhile). Mark it
         * as having pages before and after, and if the epoch moved on,
         * trim (under the lock: it empties the region only if no live
         * epoch uses it), so what we populated is not left behind. A trim
         * clears the mark before it empties the region (pq_ring_trim): the
         * mark after the populate either comes after that clear and
         * survives it, or comes before it, and then the pages it marks
         * existed before the region was emptied. acq_rel on that mark:
         * release, the pages exist before it; acquire, coming after a
         * trim's clear (acq_rel) it sees the epoch that trim moved, so we
         * trim below. The first mark is relaxed: a hint only. */
        if (level != 0)
            atomic_fetch_or_explicit(&c->dirty_levels, 1ull << level, memory_order_relaxed);
        int rc = pq_populate(r->ep_base + from, want - from);
        if (level != 0) {
            atomic_fetch_or_explicit(&c->dirty_levels, 1ull << level, memory_order_acq_rel);
            /* acquire: pairs with the release that published the epoch. */
            if (atomic_load_explicit(&c->epoch, memory_order_acquire) != r->ep_n) {
                (void)pq_ring_trim(r);
                return rc < 0 ? rc : 0; /* the claim loads the current epoch */
            }
        }
        if (rc < 0)
            return rc;
        /* Atomic max under the same tag: concurrent producers may back the
         * same chunk (harmless, the second populate finds the pages
         * there); a grow that retagged the level meanwhile wins (what we
         * backed then stays until a trim empties the level). release on
         * success: the pages given above exist for whoever reads the new
         * extent with acquire; relaxed on failure: nothing published. */
        for (;;) {
            if (level != 0 && (word >> 32) != (uint32_t)r->ep_n)
                break;
            if ((word & 0xffffffffu) * PQ_RING_EXTENT_UNIT >= want)
                break;
            const uint64_t next = (word & ~(uint64_t)0xffffffffu) | (want / PQ_RING_EXTENT_UNIT);
            if (atomic_compare_exchange_weak_explicit(extent_word, &word, next,
                                                      memory_order_release, memory_order_relaxed))
                break;
        }
        word = atomic_load_explicit(extent_word, memory_order_acquire);
        backed = (word & 0xffffffffu) * PQ_RING_EXTENT_UNIT;
    }
    if (level == 0 || (word >> 32) == (uint32_t)r->ep_n)
        r->reserved_cache = backed >= cap ? UINT64_MAX : r->ep_start + backed;
    return 0;
}

int pq_ring_populate_supported(void)
{
    static _Atomic int known; /* 0: not probed yet, 1: yes, 2: no */
    /* relaxed: a plain cache of a fact about the kernel; racing probes
     * find the same answer. */
    int k = atomic_load_explicit(&known, memory_order_relaxed);
    if (k == 0) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return 0; /* cannot tell now: reserve everything this time */
        k = madvise(p, page, MADV_POPULATE_WRITE) == 0 ? 1 : 2;
        munmap(p, page);
        atomic_store_explicit(&known, k, memory_order_relaxed);
    }
    return k == 1;
}
