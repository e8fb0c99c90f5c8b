/*
 * pq_common.h - shared definitions of the pyqueue C core.
 *
 * The core is plain C11 with no Python.h: every primitive works on memory
 * it is handed (a shared-memory segment or a mapped file), returns 0 or a
 * negative errno-style code, never prints and never aborts.
 */
#ifndef PQ_COMMON_H
#define PQ_COMMON_H

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define PQ_CACHE_LINE 64
#define PQ_ALIGNED_LINE __attribute__((aligned(PQ_CACHE_LINE)))

#define PQ_LIKELY(x) __builtin_expect(!!(x), 1)
#define PQ_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Round n up to a multiple of a (a is a power of two). */
static inline uint64_t pq_align_up(uint64_t n, uint64_t a)
{
    return (n + a - 1) & ~(a - 1);
}

static inline int pq_is_power_of_two(uint64_t n)
{
    return n != 0 && (n & (n - 1)) == 0;
}

/* A hint to the CPU that we are in a spin loop. */
static inline void pq_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

#endif /* PQ_COMMON_H */
