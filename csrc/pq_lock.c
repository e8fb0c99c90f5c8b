/* pq_lock.c - every lock of the core, taken with a deadline. See pq_lock.h. */
#define _GNU_SOURCE
#include "pq_lock.h"

#include <signal.h>
#include <time.h>

#include "pq_fault.h"
#include "pq_lock_word.h"
#include "pq_wait.h"

/* The largest thread id Linux hands out (PID_MAX_LIMIT, 64-bit). */
#define PQ_LOCK_TID_MAX (4 * 1024 * 1024)

/* How long lock sites wait for C callers; 0 for the bindings. Relaxed: set
 * once when a binding is imported, before it calls the core, and only
 * read by this process. */
static _Atomic int64_t pq_lock_core_wait = PQ_LOCK_CORE_WAIT_NS;

/* The bindings' wait in calls that do not block (pq_lock_bounded_wait).
 * Relaxed: a setting, read alone. */
static _Atomic int64_t pq_lock_bounded_ns = PQ_LOCK_BOUNDED_WAIT_NS;

/* Per thread: the lock the last lock site found busy, and the one
 * pq_lock_wait_busy acquired for the next (with the owner-died flag it
 * saw). Touched only off the fast path. */
static __thread pthread_mutex_t *pq_lock_busy;
static __thread pthread_mutex_t *pq_lock_held;
static __thread int pq_lock_held_died;

int pq_lock_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    int rc;

    if (pthread_mutexattr_init(&attr) != 0)
        return -ENOMEM;
    rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
    return -rc;
}

/* The mutex type the C library reads before anything else (PQ_LOCK_KIND,
 * pq_lock_word.h): anything but ours sends it down another path (priority
 * inheritance, not robust, EINVAL). */
static inline int pq_lock_kind_ok(const pthread_mutex_t *m)
{
    return pq_lock_kind_load(m) == PQ_LOCK_KIND;
}

int pq_lock_holder(const pthread_mutex_t *m)
{
    uint32_t w = pq_lock_word_load(m);
    if (w & FUTEX_OWNER_DIED)
        return 0;
    return (int)(w & FUTEX_TID_MASK);
}

/*
 * Can the held lock m be a lock of ours? 0 when it can (wait on), else
 * PQ_ERR_LOCK_DAMAGED, or -EDEADLK when it names this thread. `waited`:
 * it has been held for a whole wait, so check that its holder exists (a
 * system call: not on every contended take).
 */
static int pq_lock_check_word(pthread_mutex_t *m, int waited)
{
    if (!pq_lock_kind_ok(m))
        return PQ_ERR_LOCK_DAMAGED;
    uint32_t w = pq_lock_word_load(m);
    /* A dead holder's lock released without pthread_mutex_consistent
     * (marked as each C library does it: pq_lock_unrecoverable). */
    if (pq_lock_unrecoverable(m, w))
        return -ENOTRECOVERABLE;
    if (w == 0 || (w & FUTEX_OWNER_DIED))
        return 0; /* free now, or its holder died: the next try takes it */
    int tid = (int)(w & FUTEX_TID_MASK);
    /* A held robust lock names its holder: no holder, or a thread id
     * Linux never hands out, is a damaged word that would make every
     * taker wait for a release that never comes. */
    if (tid == 0 || tid > PQ_LOCK_TID_MAX)
        return PQ_ERR_LOCK_DAMAGED;
    if (tid == pq_lock_self_tid())
        return -EDEADLK;
    /* A holder that died had its locks marked FUTEX_OWNER_DIED by the
     * kernel before its thread id was freed, so a word that still names a
     * thread that does not exist (and did not change meanwhile) is damage. */
    if (waited && kill(tid, 0) != 0 && errno == ESRCH && pq_lock_word_load(m) == w)
        return PQ_ERR_LOCK_DAMAGED;
    return 0;
}

/* A trylock of our kind of lock (a pthread code), EINVAL for another kind
 * or, under musl, an impossible word that musl would misread. */
static inline int pq_lock_try(pthread_mutex_t *m)
{
    if (PQ_UNLIKELY(!pq_lock_kind_ok(m)))
        return EINVAL;
#if !PQ_LOCK_HAS_CLOCKLOCK
    /* musl's trylock misreads some impossible words (as a dead holder's,
     * or not recoverable) where glibc answers EBUSY and
     * pq_lock_check_word finds the damage: refused before musl sees them. */
    if (PQ_UNLIKELY(pq_lock_word_misread(pq_lock_word_load(m))))
        return EINVAL;
#endif
    return pthread_mutex_trylock(m);
}

#if PQ_LOCK_HAS_CLOCKLOCK
/* One timed wait for m, until until_ns (CLOCK_MONOTONIC): a pthread code. */
static int pq_lock_wait_slice(pthread_mutex_t *m, int64_t until_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(until_ns / 1000000000LL),
                          .tv_nsec = (long)(until_ns % 1000000000LL)};
    return pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
}
#else
/*
 * One timed wait for m, until until_ns (CLOCK_MONOTONIC), under musl: the
 * wait of musl's pthread_mutex_timedlock (which is on CLOCK_REALTIME, and
 * re-reads that clock after every wake-up, so a wall-clock step backwards
 * would stretch it), with a FUTEX_WAIT_BITSET deadline on CLOCK_MONOTONIC
 * instead (pq_futex_wait). Its protocol: count itself in _m_waiters (so
 * the unlock wakes one waiter, and the trylock of another taker keeps
 * FUTEX_WAITERS in the word), set FUTEX_WAITERS in the word it waits on
 * (a compare-exchange: the word may have changed meanwhile, and then the
 * futex wait returns at once), wait, uncount. A pthread code: 0,
 * EOWNERDEAD, ENOTRECOVERABLE, EBUSY (woken, or free for a moment, and
 * taken by another: the caller checks the word and tries again), ETIMEDOUT.
 */
static int pq_lock_wait_slice(pthread_mutex_t *m, int64_t until_ns)
{
    uint32_t *word = pq_lock_word_ptr(m);
    uint32_t w = pq_lock_word_load(m);

    if ((w & FUTEX_TID_MASK) != 0 && !(w & FUTEX_OWNER_DIED)) {
        /* seq_cst, as musl's a_inc: the count must be visible before the
         * word is read by an unlock that decides whether to wake. */
        __atomic_fetch_add(pq_lock_waiters_ptr(m), 1, __ATOMIC_SEQ_CST);
        /* seq_cst, as musl's a_cas. When it fails the word has changed
         * and (unless it is t by now) the wait on t returns at once. */
        uint32_t t = w | FUTEX_WAITERS;
        __atomic_compare_exchange_n(word, &w, t, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        int rc = pq_futex_wait((_Atomic uint32_t *)word, t, until_ns);
        /* seq_cst, as musl's a_dec. */
        __atomic_fetch_sub(pq_lock_waiters_ptr(m), 1, __ATOMIC_SEQ_CST);
        if (rc == -ETIMEDOUT) {
            rc = pq_lock_try(m);
            return rc == EBUSY ? ETIMEDOUT : rc;
        }
    }
    return pq_lock_try(m);
}
#endif

/* pq_lock_acquire once a first try answered rc (a pthread code). */
static int pq_lock_settle(pthread_mutex_t *m, int rc, int64_t deadline_ns, int *owner_died)
{
    int waited = 0;

    *owner_died = 0;
    for (;;) {
        switch (rc) {
        case 0:
            return 0;
        case EOWNERDEAD:
            *owner_died = 1;
            return 0;
        case ENOTRECOVERABLE:
            return -ENOTRECOVERABLE;
        case EBUSY:
            break;
        case ETIMEDOUT:
            waited = 1;
            break;
        default:
            /* EINVAL, EAGAIN, EDEADLK...: not what our kind of mutex says. */
            return PQ_ERR_LOCK_DAMAGED;
        }
        rc = pq_lock_check_word(m, waited);
        if (rc < 0)
            return rc;
        if (deadline_ns <= 0)
            return -EBUSY;
        int64_t now = pq_monotonic_ns();
        if (now >= deadline_ns)
            return -ETIMEDOUT;
        /* At most PQ_LOCK_CHECK_NS per wait, to check the word between. */
        int64_t until = deadline_ns - now > PQ_LOCK_CHECK_NS ? now + PQ_LOCK_CHECK_NS : deadline_ns;
        rc = pq_lock_wait_slice(m, until);
    }
}

int pq_lock_acquire(pthread_mutex_t *m, int64_t deadline_ns, int *owner_died)
{
    return pq_lock_settle(m, pq_lock_try(m), deadline_ns, owner_died);
}

/* pq_lock_take's answer: PQ_FAULT_IN_LOCK when it holds the lock (tests
 * stop a holder there). */
static inline int pq_lock_taken(int rc)
{
    if (rc == 0)
        PQ_FAULT_POINT(PQ_FAULT_IN_LOCK);
    return rc;
}

int pq_lock_take(pthread_mutex_t *m, int *owner_died)
{
    /* The fast path: our kind of lock, free. No clock, no system call. */
    int rc = pq_lock_try(m);
    if (PQ_LIKELY(rc == 0)) {
        *owner_died = 0;
        return pq_lock_taken(0);
    }
    if (rc == EBUSY && pq_lock_held == m) {
        /* Acquired for this call by pq_lock_wait_busy. */
        *owner_died = pq_lock_held_died;
        pq_lock_held = NULL;
        return pq_lock_taken(0);
    }
    int64_t wait = atomic_load_explicit(&pq_lock_core_wait, memory_order_relaxed);
    if (wait > 0)
        return pq_lock_taken(pq_lock_settle(m, rc, pq_monotonic_ns() + wait, owner_died));
    rc = pq_lock_settle(m, rc, 0, owner_died);
    if (rc == -EBUSY) {
        pq_lock_busy = m;
        return PQ_ERR_LOCK_BUSY;
    }
    return pq_lock_taken(rc);
}

void pq_lock_set_core_wait(int64_t ns)
{
    atomic_store_explicit(&pq_lock_core_wait, ns < 0 ? 0 : ns, memory_order_relaxed);
}

int64_t pq_lock_bounded_wait(void)
{
    return atomic_load_explicit(&pq_lock_bounded_ns, memory_order_relaxed);
}

void pq_lock_set_bounded_wait(int64_t ns)
{
    atomic_store_explicit(&pq_lock_bounded_ns, ns > 0 ? ns : PQ_LOCK_BOUNDED_WAIT_NS,
                          memory_order_relaxed);
}

int pq_lock_wait_busy(int64_t deadline_ns)
{
    pthread_mutex_t *m = pq_lock_busy;
    int died;

    if (m == NULL || pq_lock_held != NULL)
        return -EINVAL;
    int rc = pq_lock_acquire(m, deadline_ns, &died);
    if (rc == -EBUSY)
        return -ETIMEDOUT;
    if (rc < 0)
        return rc;
    pq_lock_held = m;
    pq_lock_held_died = died;
    return 0;
}

void pq_lock_drop(void)
{
    pthread_mutex_t *m = pq_lock_held;
    if (m == NULL)
        return;
    pq_lock_held = NULL;
    /* The verb returned before its lock site, so its repair of a dead
     * holder's leftovers did not run. Unlocking an inconsistent robust
     * mutex would make it unusable for good; marking it consistent skips
     * that repair. Only a verb that takes two locks can get here: a
     * group create (pq_group_find) that finds the table lock busy after
     * the group lock was acquired for it; the group repair it skips is
     * redone by every join and reap (docs/design.md, "Locks"). */
    if (pq_lock_held_died)
        pthread_mutex_consistent(m);
    pthread_mutex_unlock(m);
}

int pq_lock_busy_holder(void)
{
    return pq_lock_busy == NULL ? 0 : pq_lock_holder(pq_lock_busy);
}
