/* pq_lock.c - every lock of the core, taken with a deadline. See pq_lock.h. */
#define _GNU_SOURCE
#include "pq_lock.h"

#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "pq_fault.h"
#include "pq_wait.h"

/*
 * glibc's view of a robust process-shared normal mutex (its ABI: the words
 * live in shared memory between processes of any glibc version). __kind of
 * pthread_mutex_init with our attributes is PTHREAD_MUTEX_ROBUST_NORMAL_NP
 * (16) | PTHREAD_MUTEX_PSHARED_BIT (128); csrc/tests/test_lock checks it.
 */
#define PQ_LOCK_KIND 144
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

/* The lock word (glibc: the futex word, holder's tid | flags). Relaxed:
 * only a diagnosis, the mutex operations do the ordering. */
static inline unsigned pq_lock_word(const pthread_mutex_t *m)
{
    return __atomic_load_n((const unsigned *)&m->__data.__lock, __ATOMIC_RELAXED);
}

/* The mutex type glibc reads before anything else: anything but ours
 * sends it down another path (priority inheritance, not robust, EINVAL).
 * Written once at init, so relaxed. */
static inline int pq_lock_kind_ok(const pthread_mutex_t *m)
{
    return __atomic_load_n(&m->__data.__kind, __ATOMIC_RELAXED) == PQ_LOCK_KIND;
}

int pq_lock_holder(const pthread_mutex_t *m)
{
    unsigned w = pq_lock_word(m);
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
    /* A dead holder's lock released without pthread_mutex_consistent
     * (glibc's __owner marker, PTHREAD_MUTEX_NOTRECOVERABLE): glibc's
     * trylock may leave the word naming the thread that found out. */
    if (__atomic_load_n(&m->__data.__owner, __ATOMIC_RELAXED) == INT_MAX - 1)
        return -ENOTRECOVERABLE;
    unsigned w = pq_lock_word(m);
    if (w == 0 || (w & FUTEX_OWNER_DIED))
        return 0; /* free now, or its holder died: the next try takes it */
    int tid = (int)(w & FUTEX_TID_MASK);
    /* A held robust lock names its holder: no holder, or a thread id
     * Linux never hands out, is a damaged word that would make every
     * taker wait for a release that never comes. */
    if (tid == 0 || tid > PQ_LOCK_TID_MAX)
        return PQ_ERR_LOCK_DAMAGED;
    if (tid == gettid())
        return -EDEADLK;
    /* A holder that died had its locks marked FUTEX_OWNER_DIED by the
     * kernel before its thread id was freed, so a word that still names a
     * thread that does not exist (and did not change meanwhile) is damage. */
    if (waited && kill(tid, 0) != 0 && errno == ESRCH && pq_lock_word(m) == w)
        return PQ_ERR_LOCK_DAMAGED;
    return 0;
}

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
        struct timespec ts = {.tv_sec = (time_t)(until / 1000000000LL),
                              .tv_nsec = (long)(until % 1000000000LL)};
        rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
    }
}

/* The first try: a trylock of our kind of lock, EINVAL for another kind. */
static inline int pq_lock_try(pthread_mutex_t *m)
{
    return PQ_LIKELY(pq_lock_kind_ok(m)) ? pthread_mutex_trylock(m) : EINVAL;
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
