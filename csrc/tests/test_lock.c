/*
 * test_lock.c - the deadline lock (pq_lock): a free lock, a lock held by
 * a live (stopped) process until the deadline, the hand-over of the
 * bindings (busy, wait with the GIL released, take over, drop), a holder
 * that died (EOWNERDEAD repaired, and not-recoverable when nobody made it
 * consistent), and damaged lock words (another kind, a thread id Linux
 * never hands out, a thread that does not exist, the other C library's
 * lock): errors, never a hang. Built with glibc (make) and with musl
 * (make musl): the words are read through pq_lock_word.h.
 */
#include "pq_test.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>

#include "../pq_lock.h"
#include "../pq_lock_word.h"

/* A fresh lock in shared memory. */
static pthread_mutex_t *new_lock(void)
{
    pthread_mutex_t *m = pq_test_shared(sizeof *m);
    if (m != NULL && pq_lock_init(m) != 0)
        return NULL;
    return m;
}

/* A child that takes m, says so on the pipe, then stops itself (SIGSTOP)
 * or exits (dies holding it). The parent reads the byte. */
static pid_t hold_in_child(pthread_mutex_t *m, int stop)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        int died;
        close(fds[0]);
        CHILD_CHECK(pq_lock_acquire(m, 0, &died) == 0);
        CHILD_CHECK(write(fds[1], "l", 1) == 1);
        if (stop)
            raise(SIGSTOP);
        _exit(0);
    }
    close(fds[1]);
    char c;
    if (pid < 0 || read(fds[0], &c, 1) != 1)
        pid = -1;
    close(fds[0]);
    return pid;
}

static int test_kind_of_our_mutexes(void)
{
    pthread_mutex_t *m = new_lock();
    CHECK(m != NULL);
    /* pq_lock.c checks this word on every take: it must be what the C
     * library writes for a robust process-shared normal mutex. */
#ifdef __GLIBC__
    CHECK_EQ(*pq_lock_kind_ptr(m), 144);
#else
    CHECK_EQ(*pq_lock_kind_ptr(m), 132);
#endif
    int died = 7;
    CHECK_EQ(pq_lock_acquire(m, 0, &died), 0);
    CHECK_EQ(died, 0);
    CHECK_EQ(pq_lock_holder(m), gettid());
    /* Ours already: an error, not a wait. */
    CHECK_EQ(pq_lock_acquire(m, pq_test_now_ns() + 1000000000LL, &died), -EDEADLK);
    pthread_mutex_unlock(m);
    CHECK_EQ(pq_lock_holder(m), 0);
    return 0;
}

/* A live holder, stopped: a trylock says -EBUSY, a wait ends at its
 * deadline with -ETIMEDOUT; once it goes on and exits, the lock is ours. */
static int test_stopped_holder_times_out(void)
{
    pthread_mutex_t *m = new_lock();
    CHECK(m != NULL);
    pid_t pid = hold_in_child(m, 1);
    CHECK(pid > 0);
    int died;
    CHECK_EQ(pq_lock_acquire(m, 0, &died), -EBUSY);
    CHECK_EQ(pq_lock_holder(m), pid);
    int64_t t0 = pq_test_now_ns();
    CHECK_EQ(pq_lock_acquire(m, t0 + 250000000LL, &died), -ETIMEDOUT);
    int64_t took = pq_test_now_ns() - t0;
    CHECK(took >= 250000000LL);
    CHECK(took < 5000000000LL);
    CHECK(kill(pid, SIGCONT) == 0);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    CHECK_EQ(pq_lock_acquire(m, pq_test_now_ns() + 5000000000LL, &died), 0);
    CHECK_EQ(died, 1); /* it exited holding it */
    CHECK_EQ(pthread_mutex_consistent(m), 0);
    pthread_mutex_unlock(m);
    return 0;
}

/* The bindings' protocol: a lock site returns PQ_ERR_LOCK_BUSY, the wait
 * acquires the lock for the next call of the verb, whose lock site takes
 * it over; a lock acquired and not taken over is released by drop. */
static int test_busy_wait_take_over(void)
{
    pthread_mutex_t *m = new_lock();
    CHECK(m != NULL);
    int died;
    pq_lock_set_core_wait(0);
    CHECK_EQ(pq_lock_wait_busy(0), -EINVAL); /* nothing found busy yet */
    pid_t pid = hold_in_child(m, 1);
    CHECK(pid > 0);
    CHECK_EQ(pq_lock_take(m, &died), PQ_ERR_LOCK_BUSY);
    CHECK_EQ(pq_lock_busy_holder(), pid);
    CHECK_EQ(pq_lock_wait_busy(pq_test_now_ns() + 100000000LL), -ETIMEDOUT);
    CHECK(kill(pid, SIGCONT) == 0);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    CHECK_EQ(pq_lock_wait_busy(pq_test_now_ns() + 5000000000LL), 0);
    /* Held for the verb: its lock site takes it, with the died flag. */
    CHECK_EQ(pq_lock_take(m, &died), 0);
    CHECK_EQ(died, 1);
    CHECK_EQ(pthread_mutex_consistent(m), 0);
    pq_lock_drop(); /* taken over: nothing to release */
    CHECK_EQ(pq_lock_holder(m), gettid());
    pthread_mutex_unlock(m);

    /* Acquired but the verb never came back to it: drop releases it. */
    pid = hold_in_child(m, 1);
    CHECK(pid > 0);
    CHECK_EQ(pq_lock_take(m, &died), PQ_ERR_LOCK_BUSY);
    CHECK(kill(pid, SIGKILL) == 0);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 128 + SIGKILL);
    CHECK_EQ(pq_lock_wait_busy(pq_test_now_ns() + 5000000000LL), 0);
    pq_lock_drop();
    CHECK_EQ(pq_lock_holder(m), 0);
    /* ... consistent again (a dead holder's lock dropped unrepaired is
     * not left unrecoverable). */
    CHECK_EQ(pq_lock_take(m, &died), 0);
    CHECK_EQ(died, 0);
    pthread_mutex_unlock(m);
    pq_lock_set_core_wait(PQ_LOCK_CORE_WAIT_NS);
    return 0;
}

/* Not made consistent by the one who got EOWNERDEAD: -ENOTRECOVERABLE
 * for everyone after, at once. */
static int test_not_recoverable(void)
{
    pthread_mutex_t *m = new_lock();
    CHECK(m != NULL);
    pid_t pid = hold_in_child(m, 0);
    CHECK(pid > 0);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    int died;
    CHECK_EQ(pq_lock_acquire(m, 0, &died), 0);
    CHECK_EQ(died, 1);
    CHECK(!pq_lock_unrecoverable(m, pq_lock_word_load(m)));
    pthread_mutex_unlock(m); /* without pthread_mutex_consistent */
    /* Marked as the C library marks it (pq_lock_word.h). */
    CHECK(pq_lock_unrecoverable(m, pq_lock_word_load(m)));
    int64_t t0 = pq_test_now_ns();
    CHECK_EQ(pq_lock_acquire(m, t0 + 5000000000LL, &died), -ENOTRECOVERABLE);
    CHECK_EQ(pq_lock_take(m, &died), -ENOTRECOVERABLE);
    CHECK(pq_test_now_ns() - t0 < 1000000000LL);
    return 0;
}

/* Damaged lock words: an error well before the deadline. */
static int test_damaged_words(void)
{
    pthread_mutex_t *m = new_lock();
    CHECK(m != NULL);
    int died;
    int64_t far = pq_test_now_ns() + 20000000000LL;
    uint32_t *word = pq_lock_word_ptr(m);

    /* Another kind of mutex (priority inheritance, not robust...). */
    for (int kind = 0; kind < 1024; kind += 37) {
        *pq_lock_kind_ptr(m) = kind == PQ_LOCK_KIND ? PQ_LOCK_KIND + 1 : kind;
        /* Held and free: a free one of another kind would be taken by
         * the C library's trylock (normal, not robust: kind 0). */
        for (uint32_t w = 0; w <= 12345; w += 12345) {
            *word = w;
            CHECK_EQ(pq_lock_acquire(m, far, &died), PQ_ERR_LOCK_DAMAGED);
            CHECK_EQ(pq_lock_take(m, &died), PQ_ERR_LOCK_DAMAGED);
        }
    }
    CHECK_EQ(pq_lock_init(m), 0);

    /* A held word naming no thread, or one Linux never hands out. */
    uint32_t bad[] = {FUTEX_WAITERS, 0x3fffffffu, FUTEX_WAITERS | 0x3ffffff0u, 5000000};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        *word = bad[i];
        /* Known at the first look: a trylock says so, not -EBUSY (nor,
         * under musl, EOWNERDEAD for a word without a holder). */
        CHECK_EQ(pq_lock_acquire(m, 0, &died), PQ_ERR_LOCK_DAMAGED);
        int64_t t0 = pq_test_now_ns();
        CHECK_EQ(pq_lock_acquire(m, far, &died), PQ_ERR_LOCK_DAMAGED);
        CHECK(pq_test_now_ns() - t0 < 1000000000LL);
    }

    /* A thread that does not exist (a child that exited and was reaped,
     * which the kernel would have marked FUTEX_OWNER_DIED had it held
     * the lock): found after one wait slice. */
    pid_t pid = fork();
    if (pid == 0)
        _exit(0);
    CHECK(pid > 0);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    *word = (unsigned)pid;
    int64_t t0 = pq_test_now_ns();
    CHECK_EQ(pq_lock_acquire(m, far, &died), PQ_ERR_LOCK_DAMAGED);
    CHECK(pq_test_now_ns() - t0 < 3 * PQ_LOCK_CHECK_NS + 1000000000LL);
    /* ... and once it is marked dead, it is an ordinary dead holder. */
    *word = FUTEX_OWNER_DIED;
    CHECK_EQ(pq_lock_acquire(m, far, &died), 0);
    CHECK_EQ(died, 1);
    CHECK_EQ(pthread_mutex_consistent(m), 0);
    pthread_mutex_unlock(m);
    return 0;
}

/* A thread of this process that waits for m (held by a child) with a far
 * deadline; what it got, after the child released it. */
struct lock_waiter {
    pthread_mutex_t *m;
    int rc, died, tid, holder;
};

static void *wait_for_lock(void *arg)
{
    struct lock_waiter *w = arg;
    w->tid = (int)gettid();
    w->rc = pq_lock_acquire(w->m, pq_test_now_ns() + 20000000000LL, &w->died);
    if (w->rc == 0) {
        w->holder = pq_lock_holder(w->m);
        pthread_mutex_unlock(w->m);
    }
    return NULL;
}

/* A waiter marks the lock word as the C library's unlock expects
 * (FUTEX_WAITERS; under musl, where pq_lock.c waits itself, also counted
 * in _m_waiters, and uncounted after), and gets the lock when its live
 * holder releases it. */
static int test_waiter_marks_the_word(void)
{
    pthread_mutex_t *m = new_lock();
    CHECK(m != NULL);
    int ready[2], go[2];
    CHECK(pipe(ready) == 0 && pipe(go) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        int died;
        char c;
        close(ready[0]);
        close(go[1]);
        CHILD_CHECK(pq_lock_acquire(m, 0, &died) == 0);
        CHILD_CHECK(write(ready[1], "l", 1) == 1);
        CHILD_CHECK(read(go[0], &c, 1) == 1);
        CHILD_CHECK(pthread_mutex_unlock(m) == 0);
        _exit(0);
    }
    CHECK(pid > 0);
    close(ready[1]);
    close(go[0]);
    char c;
    CHECK(read(ready[0], &c, 1) == 1);

    struct lock_waiter w = {.m = m, .rc = 1};
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, wait_for_lock, &w) == 0);
    /* Until the waiter has marked the word (polled: no event tells), at
     * most 10 s. */
    int64_t until = pq_test_now_ns() + 10000000000LL;
    int marked = 0;
    while (!marked && pq_test_now_ns() < until) {
        uint32_t word = pq_lock_word_load(m);
        marked = (word & FUTEX_WAITERS) && (int)(word & FUTEX_TID_MASK) == pid;
#if !PQ_LOCK_HAS_CLOCKLOCK
        marked = marked && __atomic_load_n(pq_lock_waiters_ptr(m), __ATOMIC_RELAXED) == 1;
#endif
        if (!marked)
            sched_yield();
    }
    CHECK(write(go[1], "g", 1) == 1);
    CHECK(pthread_join(thread, NULL) == 0);
    close(ready[0]);
    close(go[1]);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    CHECK(marked);
    CHECK_EQ(w.rc, 0);
    CHECK_EQ(w.died, 0);
    CHECK_EQ(w.holder, w.tid);
    CHECK_EQ(pq_lock_word_load(m), 0);
#if !PQ_LOCK_HAS_CLOCKLOCK
    CHECK_EQ(__atomic_load_n(pq_lock_waiters_ptr(m), __ATOMIC_RELAXED), 0);
#endif
    return 0;
}

/* A lock the other C library initialized (a segment shared between a
 * glibc and a musl process), free and held, as its bytes: refused as
 * damaged at once, never taken or waited for. The holder is thread 1
 * (alive): a glibc lock held by thread 132 would read as musl's type
 * (docs/design.md, "Packaging and platforms"). */
static int test_other_libc_lock_is_damaged(void)
{
    pthread_mutex_t *m = new_lock();
    CHECK(m != NULL);
    int died;
    for (int held = 0; held < 2; held++) {
        int32_t image[sizeof(pthread_mutex_t) / sizeof(int32_t)] = {0};
#ifdef __GLIBC__
        /* musl's: _m_type (robust | pshared), _m_lock. */
        image[0] = 132;
        image[1] = held;
#else
        /* glibc's: __lock, __count, __owner, __nusers, __kind. */
        image[0] = held;
        image[2] = held;
        image[3] = held;
        image[4] = 144;
#endif
        memcpy(m, image, sizeof image);
        int64_t t0 = pq_test_now_ns();
        CHECK_EQ(pq_lock_acquire(m, 0, &died), PQ_ERR_LOCK_DAMAGED);
        CHECK_EQ(pq_lock_acquire(m, t0 + 20000000000LL, &died), PQ_ERR_LOCK_DAMAGED);
        CHECK_EQ(pq_lock_take(m, &died), PQ_ERR_LOCK_DAMAGED);
        CHECK(pq_test_now_ns() - t0 < 1000000000LL);
    }
    /* ... and once pq_lock_init has written ours, it is a lock again. */
    CHECK_EQ(pq_lock_init(m), 0);
    CHECK_EQ(pq_lock_acquire(m, 0, &died), 0);
    pthread_mutex_unlock(m);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("test_lock\n");
    RUN(test_kind_of_our_mutexes);
    RUN(test_stopped_holder_times_out);
    RUN(test_busy_wait_take_over);
    RUN(test_not_recoverable);
    RUN(test_damaged_words);
    RUN(test_waiter_marks_the_word);
    RUN(test_other_libc_lock_is_damaged);
    return pq_test_result();
}
