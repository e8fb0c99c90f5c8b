/*
 * pq_lock.h - every lock of every kind (the claim locks of rings, topics
 * and memory logs, a directory log's partition locks, the work queue's
 * lock, the consumer-group locks) is taken here, always with a deadline.
 *
 * The locks are robust process-shared pthread mutexes in shared memory: a
 * holder that dies hands the lock to the next taker with EOWNERDEAD (the
 * caller repairs what it left and marks it consistent). A holder that is
 * alive but stopped (SIGSTOP, a debugger, a frozen cgroup) keeps it: a
 * taker must be able to give up, and must not wait with the GIL held.
 *
 * Two layers:
 *
 * pq_lock_acquire(m, deadline_ns, &died) is the primitive: a trylock (the
 * fast path: one locked instruction, no system call, no clock read), then
 * timed waits on CLOCK_MONOTONIC (glibc's pthread_mutex_clocklock; under
 * musl, which has none, a futex wait of pq_lock.c's own) of at most
 * PQ_LOCK_CHECK_NS each, between which the lock word is checked: a word
 * that cannot be a lock of ours (a damaged segment) is PQ_ERR_LOCK_DAMAGED
 * at once instead of a wait (see pq_lock_check_word).
 *
 * pq_lock_take(m, &died) is what the core's lock sites call. It tries the
 * lock; when it is busy, what happens depends on who called the core:
 *  - C callers (the default; csrc/tests): a wait of up to pq_lock_core_wait
 *    nanoseconds (PQ_LOCK_CORE_WAIT_NS unless pq_lock_set_core_wait said
 *    otherwise), then -ETIMEDOUT;
 *  - the Python bindings call pq_lock_set_core_wait(0) once: the lock site
 *    remembers the lock (per thread) and the verb returns PQ_ERR_LOCK_BUSY
 *    at once, having changed nothing. The binding then calls
 *    pq_lock_wait_busy(deadline) with the GIL released, in slices, handling
 *    signals between them; when it returns 0 this thread holds the lock,
 *    and the binding calls the verb again with the GIL held: its lock site
 *    finds the lock held for it (pq_lock_take takes it over, with the
 *    owner-died flag the wait saw, so the verb's own repair runs). After
 *    that call the binding calls pq_lock_drop(), which releases the lock if
 *    the verb returned before it reached that lock site.
 * So the GIL is held only for trylocks, and every wait has a deadline.
 */
#ifndef PQ_LOCK_H
#define PQ_LOCK_H

#include <pthread.h>

#include "pq_common.h"

/* The verb found a lock busy and changed nothing (bindings only, above). */
#define PQ_ERR_LOCK_BUSY (-ENOLCK)
/* The lock word cannot be a lock of ours: the segment is damaged. */
#define PQ_ERR_LOCK_DAMAGED (-EUCLEAN)

/* The longest single wait between two checks of the lock word. */
#define PQ_LOCK_CHECK_NS 100000000LL
/* How long a lock site waits for C callers (see above). */
#define PQ_LOCK_CORE_WAIT_NS 10000000000LL
/* How long the bindings wait in calls that do not block by their API
 * (ack, commit, append...) before they raise LockTimeout, by default. */
#define PQ_LOCK_BOUNDED_WAIT_NS 10000000000LL

/* Initialize a robust process-shared mutex in zeroed shared memory. */
int pq_lock_init(pthread_mutex_t *m);

/*
 * Take m before deadline_ns (CLOCK_MONOTONIC; 0 or a past deadline: one
 * trylock). 0 with *owner_died = 1 when the previous holder died (the lock
 * is held but inconsistent: repair, then pthread_mutex_consistent), else 0
 * with *owner_died = 0. -EBUSY (a trylock only) / -ETIMEDOUT when it is
 * still held at the deadline; -ENOTRECOVERABLE when a holder died and
 * nobody repaired it; PQ_ERR_LOCK_DAMAGED for an impossible lock word.
 */
int pq_lock_acquire(pthread_mutex_t *m, int64_t deadline_ns, int *owner_died);

/*
 * The lock sites of the core: pq_lock_acquire by the caller's rules (see
 * above). 0 (and *owner_died), PQ_ERR_LOCK_BUSY, or an error of
 * pq_lock_acquire.
 */
int pq_lock_take(pthread_mutex_t *m, int *owner_died);

/* How long lock sites wait (ns, > 0), or 0: they return PQ_ERR_LOCK_BUSY
 * (bindings). Process-wide. */
void pq_lock_set_core_wait(int64_t ns);

/* The bindings' wait for calls that do not block by their API (ns), and
 * its setter (<= 0: the default). Process-wide. */
int64_t pq_lock_bounded_wait(void);
void pq_lock_set_bounded_wait(int64_t ns);

/*
 * With the GIL released: acquire the lock that this thread's last
 * pq_lock_take found busy, before deadline_ns, and keep it for the verb's
 * next call. 0, -ETIMEDOUT, -EINVAL when there is none, or an error of
 * pq_lock_acquire. No lock is held unless it returns 0.
 */
int pq_lock_wait_busy(int64_t deadline_ns);

/* Release a lock pq_lock_wait_busy acquired that no lock site took over. */
void pq_lock_drop(void);

/* The thread id in the lock word of the lock this thread last found busy
 * (its holder), 0 when none is known. For error messages. */
int pq_lock_busy_holder(void);

/* The holder's thread id in m's lock word; 0 when free or after its
 * holder died. Not a lock operation: for diagnostics. */
int pq_lock_holder(const pthread_mutex_t *m);

#endif /* PQ_LOCK_H */
