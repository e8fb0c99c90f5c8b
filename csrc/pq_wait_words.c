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

/* Set once a futex_waitv call answered ENOSYS (a kernel before 5.16):
 * from then on pq_wait_words goes sliced at once. Relaxed: a cache of a
 * property of the kernel, the same for every thread; a thread that has not
 * seen it yet only makes one more ENOSYS system call. */
static _Atomic int pq_waitv_missing;

/* Whether word i no longer holds its expected value, asked of the kernel
 * (a FUTEX_WAIT whose absolute deadline has passed: EAGAIN when the value
 * differs, ETIMEDOUT when it holds) and not read here: a word whose
 * mapping a close() removed meanwhile is -EFAULT, not a SIGSEGV. Returns
 * 1, 0 or -errno. */
static int pq_wait_word_moved(const pq_wait_word *w)
{
    static const struct timespec past = {0, 0}; /* CLOCK_MONOTONIC 0: passed */
    long rc = syscall(SYS_futex, (uint32_t *)w->word,
                      FUTEX_WAIT_BITSET | (w->private_word ? FUTEX_PRIVATE_FLAG : 0),
                      w->expected, &past, NULL, FUTEX_BITSET_MATCH_ANY);
    if (rc == 0 || errno == ETIMEDOUT || errno == EINTR)
        return 0;
    if (errno == EAGAIN)
        return 1;
    return -errno;
}

/* The first word of w[0..n) that no longer holds its expected value, n
 * when none, or -errno (-EFAULT: a word is unmapped). The acquire fence:
 * what the notifier wrote before it bumped the word is visible to the
 * caller, as after a futex wake. */
static int pq_wait_words_changed(const pq_wait_word *w, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) { /* bounded: n <= PQ_WAIT_WORDS_MAX */
        int moved = pq_wait_word_moved(&w[i]);
        if (moved < 0)
            return moved;
        if (moved) {
            atomic_thread_fence(memory_order_acquire);
            return (int)i;
        }
    }
    return (int)n;
}

int pq_wait_words_sliced(const pq_wait_word *w, uint32_t n, int64_t deadline_ns)
{
    if (n == 0 || n > PQ_WAIT_WORDS_MAX)
        return -EINVAL;
    int changed = pq_wait_words_changed(w, n);
    if (changed < 0)
        return changed;
    if (changed < (int)n)
        return (int)n; /* as futex_waitv's EAGAIN: nothing to wait for */
    /* The word to park on between looks: the last private one (the asyncio
     * waiter's own, which a new registration bumps), else the last one. */
    uint32_t park = n - 1;
    for (uint32_t i = n; i-- > 0;) { /* bounded: n words */
        if (w[i].private_word) {
            park = i;
            break;
        }
    }
    for (;;) { /* bounded by deadline_ns: each turn parks up to one slice */
        int64_t now = pq_monotonic_ns();
        if (deadline_ns >= 0 && now >= deadline_ns)
            return -ETIMEDOUT;
        int64_t until = now + PQ_WAIT_WORDS_SLICE_NS;
        if (deadline_ns >= 0 && deadline_ns < until)
            until = deadline_ns;
        struct timespec ts = {.tv_sec = until / 1000000000, .tv_nsec = until % 1000000000};
        long rc = syscall(SYS_futex, (uint32_t *)w[park].word,
                          FUTEX_WAIT_BITSET | (w[park].private_word ? FUTEX_PRIVATE_FLAG : 0),
                          w[park].expected, &ts, NULL, FUTEX_BITSET_MATCH_ANY);
        if (rc < 0 && errno == EINTR)
            return -EINTR;
        if (rc < 0 && errno != EAGAIN && errno != ETIMEDOUT)
            return -errno;
        changed = pq_wait_words_changed(w, n);
        if (changed < (int)n)
            return changed; /* the first word that moved, or -errno */
    }
}

/* The kernel's struct futex_waitv (uapi, 5.16+), spelled here so that the
 * build does not need headers that new (manylinux_2_34's may be older). */
struct pq_futex_waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};

int pq_wait_words(const pq_wait_word *w, uint32_t n, int64_t deadline_ns)
{
    struct pq_futex_waitv v[PQ_WAIT_WORDS_MAX];
    struct timespec ts, *tsp = NULL;

    if (n == 0 || n > PQ_WAIT_WORDS_MAX)
        return -EINVAL;
    if (atomic_load_explicit(&pq_waitv_missing, memory_order_relaxed))
        return pq_wait_words_sliced(w, n, deadline_ns);
    for (uint32_t i = 0; i < n; i++) { /* bounded: n <= PQ_WAIT_WORDS_MAX */
        v[i].val = w[i].expected;
        v[i].uaddr = (uint64_t)(uintptr_t)w[i].word;
        v[i].flags = FUTEX_32 | (w[i].private_word ? FUTEX_PRIVATE_FLAG : 0);
        v[i].reserved = 0;
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
    case ENOSYS: /* a kernel before 5.16: look at the words in slices */
        atomic_store_explicit(&pq_waitv_missing, 1, memory_order_relaxed);
        return pq_wait_words_sliced(w, n, deadline_ns);
    default:
        return -errno;
    }
}
