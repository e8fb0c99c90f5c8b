/* pq_wait.c - shared futex waits with CLOCK_MONOTONIC deadlines. */
#define _GNU_SOURCE
#include "pq_wait.h"

#include <limits.h>
#include <sched.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

int64_t pq_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int pq_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline_ns)
{
    struct timespec ts, *tsp = NULL;
    long rc;

    if (deadline_ns >= 0) {
        if (pq_monotonic_ns() >= deadline_ns)
            return -ETIMEDOUT;
        ts.tv_sec = deadline_ns / 1000000000;
        ts.tv_nsec = deadline_ns % 1000000000;
        tsp = &ts;
    }
    /*
     * FUTEX_WAIT_BITSET takes an absolute timeout, on CLOCK_MONOTONIC
     * unless FUTEX_CLOCK_REALTIME is given: a wall-clock jump cannot
     * stretch or shorten the wait.
     */
    rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected, tsp, NULL,
                 FUTEX_BITSET_MATCH_ANY);
    if (rc == 0)
        return 0;
    switch (errno) {
    case EAGAIN: /* the word had already changed */
        return 0;
    case ETIMEDOUT:
        return -ETIMEDOUT;
    case EINTR:
        return -EINTR;
    default:
        return -errno;
    }
}

int pq_futex_wake(_Atomic uint32_t *word, int n)
{
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
    return rc < 0 ? -errno : (int)rc;
}

uint32_t pq_event_prepare(pq_event *ev)
{
    atomic_fetch_add_explicit(&ev->waiters, 1, memory_order_relaxed);
    /*
     * Dekker-style handshake with pq_event_notify: this full fence orders
     * our waiter registration before the caller's re-check of the
     * condition; the notifier has the mirror fence between making the
     * condition true and reading the waiter count. So at least one side
     * sees the other.
     */
    atomic_thread_fence(memory_order_seq_cst);
    /* acquire pairs with the release bump in pq_event_notify: a waiter
     * that reads the bumped seq also sees the condition it announces. */
    return atomic_load_explicit(&ev->seq, memory_order_acquire);
}

int pq_event_park(pq_event *ev, uint32_t seq, int64_t deadline_ns)
{
    return pq_futex_wait(&ev->seq, seq, deadline_ns);
}

void pq_event_finish(pq_event *ev)
{
    atomic_fetch_sub_explicit(&ev->waiters, 1, memory_order_relaxed);
}

void pq_event_notify(pq_event *ev, int n)
{
    /* Mirror of the fence in pq_event_prepare (see there). */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&ev->waiters, memory_order_relaxed) == 0)
        return;
    /* Bump seq before waking so a waiter about to park sees a new value. */
    atomic_fetch_add_explicit(&ev->seq, 1, memory_order_release);
    pq_futex_wake(&ev->seq, n);
}

void pq_event_wake_all(pq_event *ev)
{
    /* Full fence: what the caller wrote (the shutdown flag) is ordered
     * before the bump, as in pq_event_notify. */
    atomic_thread_fence(memory_order_seq_cst);
    /* release: a waiter whose prepare reads the new seq (acquire) sees
     * the caller's writes. */
    atomic_fetch_add_explicit(&ev->seq, 1, memory_order_release);
    pq_futex_wake(&ev->seq, INT32_MAX);
}

int pq_spin_until(int (*ready)(void *arg), void *arg, uint32_t spin_ns, int64_t deadline_ns)
{
    if (ready(arg))
        return 1;
    if (spin_ns == 0)
        return 0;
    int64_t end = pq_monotonic_ns() + spin_ns;
    if (deadline_ns >= 0 && deadline_ns < end)
        end = deadline_ns;
    for (uint32_t i = 1;; i++) {
        /* Pause first: the other side is usually a few hundred ns away.
         * Then yield, so that spinning never starves a process that
         * shares our core (more processes than cores). */
        if (i < 64)
            pq_cpu_relax();
        else
            sched_yield();
        if (ready(arg))
            return 1;
        if ((i & 7) == 0 && pq_monotonic_ns() >= end)
            return 0;
    }
}

int pq_event_wait_until(pq_event *ev, int (*ready)(void *arg), void *arg, uint32_t spin_ns,
                        int64_t deadline_ns)
{
    if (pq_spin_until(ready, arg, spin_ns, deadline_ns))
        return 0;
    uint32_t seq = pq_event_prepare(ev);
    int rc = 0;
    if (!ready(arg))
        rc = pq_event_park(ev, seq, deadline_ns);
    pq_event_finish(ev);
    return rc;
}
