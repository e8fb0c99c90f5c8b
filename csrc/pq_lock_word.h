/*
 * pq_lock_word.h - the fields of a pthread_mutex_t that pq_lock.c reads,
 * for the two C libraries the core is built with (glibc: manylinux wheels
 * and most distributions; musl: musllinux wheels, Alpine). Nothing else in
 * the core looks inside a mutex.
 *
 * Both are robust process-shared mutexes over the kernel's robust futex
 * protocol, so their lock word means the same under both: the holder's
 * thread id in FUTEX_TID_MASK, FUTEX_OWNER_DIED set by the kernel when the
 * holder dies, FUTEX_WAITERS. What differs is where the words are, the
 * type value pthread_mutex_init writes, how a lock left inconsistent is
 * marked, and that musl has no pthread_mutex_clocklock (the deadline
 * wait; see PQ_LOCK_HAS_CLOCKLOCK).
 *
 * The two layouts cannot share a lock: a segment initialized by one and
 * opened by the other fails the type check (pq_lock.c's pq_lock_kind_ok)
 * and is refused as damaged (docs/design.md, "Packaging and platforms").
 * csrc/tests/test_lock checks the type value and the words under both.
 *
 * Loads are relaxed: they are diagnoses (is this a lock of ours, who holds
 * it); the mutex operations do the ordering. Include it in a file that
 * defines _GNU_SOURCE first (gettid, syscall).
 */
#ifndef PQ_LOCK_WORD_H
#define PQ_LOCK_WORD_H

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__GLIBC__)

/*
 * glibc (struct __pthread_mutex_s, the same on x86_64 and aarch64; its ABI:
 * the words live in shared memory between processes of any glibc version).
 */

/* __kind after pthread_mutex_init with our attributes:
 * PTHREAD_MUTEX_ROBUST_NORMAL_NP (16) | PTHREAD_MUTEX_PSHARED_BIT (128).
 * glibc reads it before anything else: another value sends it down another
 * path (priority inheritance, not robust, EINVAL). */
#define PQ_LOCK_KIND 144

/* glibc has pthread_mutex_clocklock (2.30): deadlines on CLOCK_MONOTONIC. */
#define PQ_LOCK_HAS_CLOCKLOCK 1

/* __lock: the futex word (holder's tid | FUTEX_OWNER_DIED | FUTEX_WAITERS). */
static inline uint32_t *pq_lock_word_ptr(pthread_mutex_t *m)
{
    return (uint32_t *)&m->__data.__lock;
}

/* __kind: the mutex type, written once at init. */
static inline int *pq_lock_kind_ptr(pthread_mutex_t *m)
{
    return &m->__data.__kind;
}

/* Left not recoverable (a dead holder's lock released without
 * pthread_mutex_consistent): glibc marks __owner with
 * PTHREAD_MUTEX_NOTRECOVERABLE (INT_MAX - 1); its trylock may leave the
 * lock word naming the thread that found out, so the word cannot tell. */
static inline int pq_lock_unrecoverable(const pthread_mutex_t *m, uint32_t word)
{
    (void)word;
    return __atomic_load_n(&m->__data.__owner, __ATOMIC_RELAXED) == INT_MAX - 1;
}

/* This thread's id, as the lock word names a holder (glibc 2.30). */
static inline int pq_lock_self_tid(void)
{
    return (int)gettid();
}

#elif defined(__linux__)

/*
 * musl (src/internal/pthread_impl.h; the mutex code that reads and writes
 * these words is the same from 1.2.0 through 1.2.5). pthread_mutex_t is a
 * union __u of int __i[] / volatile int __vi[] / pointers __p[]; the
 * fields are __i[0] _m_type, __vi[1] _m_lock, __vi[2] _m_waiters,
 * __p[3] _m_prev, __p[4] _m_next (the robust list), __i[5] _m_count.
 * Any other C library fails to compile here (no __u), or below.
 */
_Static_assert(sizeof(pthread_mutex_t) == (sizeof(long) == 8 ? 40 : 24),
               "pq_lock_word.h: not musl's pthread_mutex_t; pyqueue knows the "
               "mutex layout of glibc and of musl only");

/* _m_type after pthread_mutex_init with our attributes: robust (4) |
 * process-shared (128), normal (0). musl adds 8 for priority inheritance;
 * a non-pshared robust mutex is not on the robust list (musl registers
 * only pshared ones), so only this value can be ours. */
#define PQ_LOCK_KIND 132

/* musl has only pthread_mutex_timedlock, on CLOCK_REALTIME: pq_lock.c waits
 * itself (pq_lock_wait_slice), with musl's waiter protocol below. */
#define PQ_LOCK_HAS_CLOCKLOCK 0

/* _m_lock: the futex word (holder's tid | FUTEX_OWNER_DIED |
 * FUTEX_WAITERS), the word the kernel's robust list points at. */
static inline uint32_t *pq_lock_word_ptr(pthread_mutex_t *m)
{
    return (uint32_t *)&m->__u.__vi[1];
}

/* _m_type: the mutex type, written once at init. */
static inline int *pq_lock_kind_ptr(pthread_mutex_t *m)
{
    return &m->__u.__i[0];
}

/* _m_waiters: how many threads are in pthread_mutex_timedlock's wait.
 * musl's unlock wakes one when it is not 0 or the word had FUTEX_WAITERS,
 * and its trylock keeps FUTEX_WAITERS in the word it writes while it is
 * not 0, so a waiter counts itself here for as long as it waits. */
static inline int *pq_lock_waiters_ptr(pthread_mutex_t *m)
{
    return (int *)&m->__u.__vi[2];
}

/* Left not recoverable: musl's unlock of a lock still marked
 * FUTEX_OWNER_DIED writes 0x7fffffff, FUTEX_OWNER_DIED and a holder of
 * FUTEX_TID_MASK (no thread has that id). */
static inline int pq_lock_unrecoverable(const pthread_mutex_t *m, uint32_t word)
{
    (void)m;
    return (word & (FUTEX_TID_MASK | FUTEX_OWNER_DIED)) == (FUTEX_TID_MASK | FUTEX_OWNER_DIED);
}

/* Words musl's trylock would misread, that neither musl, glibc nor the
 * kernel write: held with no thread id and not FUTEX_OWNER_DIED (musl
 * takes it as a dead holder's: EOWNERDEAD), and the holder FUTEX_TID_MASK
 * without FUTEX_OWNER_DIED (musl says ENOTRECOVERABLE for any word with
 * that holder). pq_lock.c refuses them as damaged before musl sees them,
 * as glibc's path does (pq_lock_check_word). */
static inline int pq_lock_word_misread(uint32_t word)
{
    uint32_t tid = word & FUTEX_TID_MASK;
    return (word != 0 && tid == 0 && !(word & FUTEX_OWNER_DIED)) ||
           (tid == FUTEX_TID_MASK && !(word & FUTEX_OWNER_DIED));
}

/* This thread's id, as the lock word names a holder. The system call, not
 * gettid(): musl has that since 1.2.2 only, and a musllinux_1_2 wheel must
 * load on 1.2.0 too. */
static inline int pq_lock_self_tid(void)
{
    return (int)syscall(SYS_gettid);
}

#else
#error "pyqueue's locks need Linux with glibc or musl (csrc/pq_lock_word.h)"
#endif

/* The lock word, relaxed (a diagnosis). */
static inline uint32_t pq_lock_word_load(const pthread_mutex_t *m)
{
    return __atomic_load_n(pq_lock_word_ptr((pthread_mutex_t *)m), __ATOMIC_RELAXED);
}

/* The type word, relaxed (written once at init). */
static inline int pq_lock_kind_load(const pthread_mutex_t *m)
{
    return __atomic_load_n(pq_lock_kind_ptr((pthread_mutex_t *)m), __ATOMIC_RELAXED);
}

#endif /* PQ_LOCK_WORD_H */
