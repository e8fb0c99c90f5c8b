/*
 * pq_wait.h - the one wait primitive: shared futex words with deadlines on
 * CLOCK_MONOTONIC.
 *
 * The futexes are not FUTEX_PRIVATE: the words live in memory shared
 * between processes.
 */
#ifndef PQ_WAIT_H
#define PQ_WAIT_H

#include <time.h>

#include "pq_common.h"

/* Now on CLOCK_MONOTONIC, in nanoseconds. */
int64_t pq_monotonic_ns(void);

/*
 * Park while *word == expected, until woken, until deadline_ns
 * (CLOCK_MONOTONIC, absolute; < 0 means no deadline), or until a signal.
 * Returns 0 when woken or when *word no longer equals expected,
 * -ETIMEDOUT at the deadline, -EINTR on a signal.
 */
int pq_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline_ns);

/* Wake up to n waiters parked on word. Returns the number woken or -errno. */
int pq_futex_wake(_Atomic uint32_t *word, int n);

/*
 * A waitable event: a sequence word plus a count of waiters, so that the
 * notifying side makes no system call when nobody waits (the Disruptor's
 * lite blocking strategy). Both fields are in shared memory.
 */
typedef struct pq_event {
    _Atomic uint32_t seq;
    _Atomic uint32_t waiters;
} pq_event;

/*
 * Waiting side, in three steps:
 *   seq = pq_event_prepare(ev);     -- registers as a waiter
 *   if (!condition) pq_event_park(ev, seq, deadline);
 *   pq_event_finish(ev);            -- unregisters
 * The condition must be re-checked after pq_event_prepare: prepare ends
 * with a full fence, so either the waiter sees the condition become true,
 * or the notifier sees waiters > 0 and bumps seq (making the park return).
 */
uint32_t pq_event_prepare(pq_event *ev);
int pq_event_park(pq_event *ev, uint32_t seq, int64_t deadline_ns);
void pq_event_finish(pq_event *ev);

/*
 * Notifying side, after making the condition true: wakes up to n waiters,
 * and makes no system call when none is registered.
 */
void pq_event_notify(pq_event *ev, int n);

/*
 * Wake every waiter of ev, registered or about to register: bumps seq
 * whether or not anyone waits (unlike pq_event_notify), so a waiter that
 * read seq before the bump does not park, and one that reads it after sees
 * everything written before this call. For rare events (shutdown), where a
 * system call too many costs nothing.
 */
void pq_event_wake_all(pq_event *ev);

/*
 * Phased back-off before parking (the Disruptor's): poll ready(arg), first
 * with a CPU pause between polls, then yielding the CPU, until spin_ns
 * have passed or deadline_ns (monotonic, < 0: none) comes. Returns 1 as
 * soon as ready() does, 0 when the time is up. Spinning keeps a consumer
 * that keeps up with its producer out of the futex: parked, it would cost
 * the producer a FUTEX_WAKE system call per message.
 */
int pq_spin_until(int (*ready)(void *arg), void *arg, uint32_t spin_ns, int64_t deadline_ns);

/*
 * The whole wait in one call: spin on ready(arg) for up to spin_ns, then
 * register on ev, re-check ready, and park until notified, the deadline
 * (monotonic, < 0: none) or a signal. 0 when worth re-checking, or
 * -ETIMEDOUT, -EINTR. The condition must be made true before ev is
 * notified (see pq_event_prepare).
 */
int pq_event_wait_until(pq_event *ev, int (*ready)(void *arg), void *arg, uint32_t spin_ns,
                        int64_t deadline_ns);

/* The event's sequence value now. Acquire: pairs with the release bump of
 * pq_event_notify and pq_event_wake_all, so what the notifier wrote before
 * the bump is visible to a caller that sees the new value. */
static inline uint32_t pq_event_seq(pq_event *ev)
{
    return atomic_load_explicit(&ev->seq, memory_order_acquire);
}

/* Waiters registered right now (for statistics). */
static inline uint32_t pq_event_waiters(pq_event *ev)
{
    return atomic_load_explicit(&ev->waiters, memory_order_relaxed);
}

#endif /* PQ_WAIT_H */
