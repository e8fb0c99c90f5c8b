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
    /* acquire: pairs with the release below of whoever backed it. */
    uint64_t backed = atomic_load_explicit(&c->reserved, memory_order_acquire);

    if (need > r->capacity)
        need = r->capacity;
    if (need > backed) {
        /* From the page that holds the first unbacked byte, to a whole
         * chunk (data area offsets: the area starts on a page boundary). */
        const uint64_t from = backed & ~(page - 1);
        uint64_t want = (need + PQ_RING_RESERVE_CHUNK - 1) & ~((uint64_t)PQ_RING_RESERVE_CHUNK - 1);
        if (want > r->capacity)
            want = r->capacity;
        int rc = pq_populate(r->data + from, want - from);
        if (rc < 0)
            return rc;
        /* Atomic max: concurrent producers may back the same chunk
         * (harmless, the second populate finds the pages there). release
         * on success: the pages given above exist for whoever reads the
         * new extent with acquire; relaxed on failure: nothing published. */
        while (backed < want &&
               !atomic_compare_exchange_weak_explicit(&c->reserved, &backed, want,
                                                      memory_order_release, memory_order_relaxed))
            ;
    }
    backed = atomic_load_explicit(&c->reserved, memory_order_acquire);
    r->reserved_cache = backed >= r->capacity ? UINT64_MAX : backed;
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
