/* pq_wait_words.c - park on several futex words with a deadline. */
#define _GNU_SOURCE
#include "pq_wait_words.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "pq_wait.h"

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449 /* the same number on every architecture */
#endif
#ifndef FUTEX_32
#define FUTEX_32 2
#endif

int pq_wait_words(const pq_wait_word *w, uint32_t n, int64_t deadline_ns)
{
    struct futex_waitv v[PQ_WAIT_WORDS_MAX];
    struct timespec ts, *tsp = NULL;

    if (n == 0 || n > PQ_WAIT_WORDS_MAX)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) { /* bounded: n <= PQ_WAIT_WORDS_MAX */
        v[i].val = w[i].expected;
        v[i].uaddr = (uint64_t)(uintptr_t)w[i].word;
        v[i].flags = FUTEX_32 | (w[i].private_word ? FUTEX_PRIVATE_FLAG : 0);
        v[i].__reserved = 0;
    }
    if (deadline_ns >= 0) {
        if (pq_monotonic_ns() >= deadline_ns)
            return -ETIMEDOUT;
        ts.tv_sec = deadline_ns / 1000000000;
        ts.tv_nsec = deadline_ns % 1000000000;
        tsp = &ts;
    }
    /* Absolute timeout on CLOCK_MONOTONIC: a wall-clock jump cannot
     * stretch or shorten the wait. The kernel compares every word with its
     * expected value after queueing on all of them, so a change made
     * before the call returns at once (EAGAIN) instead of being missed. */
    long rc = syscall(SYS_futex_waitv, v, n, 0, tsp, CLOCK_MONOTONIC);
    if (rc >= 0)
        return (int)rc;
    switch (errno) {
    case EAGAIN:
        return (int)n;
    case ETIMEDOUT:
        return -ETIMEDOUT;
    case EINTR:
        return -EINTR;
    default:
        return -errno;
    }
}
