/*
 * pq_cas.h - a compare-and-swap of two adjacent 64-bit words (a 16-aligned
 * pair) where the CPU has one: x86-64 cmpxchg16b; others with a 16-byte
 * __sync CAS. PQ_HEAD_PAIR_CAS says whether it exists.
 *
 * Used for head + head_msgs (pq_ring_consume) and for a process slot's
 * owner + taking (pq_ring_slots.c). Other code reads either half with
 * plain 64-bit atomic loads.
 */
#ifndef PQ_CAS_H
#define PQ_CAS_H

#include "pq_common.h"

#if defined(__x86_64__)
#define PQ_HEAD_PAIR_CAS 1
/* CAS {pair[0], pair[1]} from {*lo, *hi} to {new_lo, new_hi}: 1 on
 * success; else 0 with *lo, *hi set to what the pair held. */
static inline int pq_cas_pair(_Atomic uint64_t *pair, uint64_t *lo, uint64_t *hi,
                              uint64_t new_lo, uint64_t new_hi)
{
    unsigned char ok;
    /* lock cmpxchg16b: a full barrier, so at least acq_rel. */
    __asm__ __volatile__("lock cmpxchg16b %1\n\tsete %0"
                         : "=q"(ok), "+m"(*(volatile uint64_t(*)[2])pair), "+a"(*lo), "+d"(*hi)
                         : "b"(new_lo), "c"(new_hi)
                         : "memory", "cc");
    return ok;
}
#elif defined(__GCC_HAVE_SYNC_COMPARE_AND_SWAP_16) && defined(__BYTE_ORDER__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define PQ_HEAD_PAIR_CAS 1
static inline int pq_cas_pair(_Atomic uint64_t *pair, uint64_t *lo, uint64_t *hi,
                              uint64_t new_lo, uint64_t new_hi)
{
    /* The __sync builtins are full barriers. */
    unsigned __int128 old = (unsigned __int128)*hi << 64 | *lo;
    unsigned __int128 got = __sync_val_compare_and_swap(
        (unsigned __int128 *)(void *)pair, old, (unsigned __int128)new_hi << 64 | new_lo);
    *lo = (uint64_t)got;
    *hi = (uint64_t)(got >> 64);
    return got == old;
}
#else
#define PQ_HEAD_PAIR_CAS 0
#endif

#endif /* PQ_CAS_H */
