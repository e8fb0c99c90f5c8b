/*
 * test_wait_words.c - pq_wait_words: the deadline, a word that already
 * differs, a wake of a shared word from another process (the index of the
 * woken word comes back), a private word woken by a thread of the same
 * process, a pq_event notified while registered, and bad counts; for
 * pq_wait_words and for its sliced form (kernels without futex_waitv).
 */
#include "pq_test.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>

#include "../pq_wait.h"
#include "../pq_wait_words.h"

#define LATE_NS (400 * 1000000LL)

/* The wait under test: pq_wait_words (futex_waitv), then the same suite
 * again against pq_wait_words_sliced (what a kernel before 5.16 gets). */
static int (*wait_fn)(const pq_wait_word *, uint32_t, int64_t) = pq_wait_words;

static int test_timeout(void)
{
    _Atomic uint32_t a = 0, b = 7;
    pq_wait_word w[2] = {{&a, 0, 0}, {&b, 7, 1}};
    int64_t t0 = pq_monotonic_ns();
    CHECK_EQ(wait_fn(w, 2, t0 + 20000000), -ETIMEDOUT);
    int64_t elapsed = pq_monotonic_ns() - t0;
    CHECK(elapsed >= 20000000);
    CHECK(elapsed < 20000000 + LATE_NS);
    /* A deadline already passed: no system call, no wait. */
    CHECK_EQ(wait_fn(w, 2, 0), -ETIMEDOUT);
    return 0;
}

static int test_changed_word(void)
{
    _Atomic uint32_t a = 0, b = 7;
    pq_wait_word w[2] = {{&a, 0, 0}, {&b, 6, 1}};
    /* b no longer holds 6: return n at once, even with no deadline. */
    CHECK_EQ(wait_fn(w, 2, -1), 2);
    return 0;
}

static int test_bad_count(void)
{
    _Atomic uint32_t a = 0;
    pq_wait_word w[1] = {{&a, 0, 0}};
    CHECK_EQ(wait_fn(w, 0, -1), -EINVAL);
    CHECK_EQ(wait_fn(w, PQ_WAIT_WORDS_MAX + 1, -1), -EINVAL);
    return 0;
}

/* A word whose mapping is gone (a directory log closed under an asyncio
 * wait): -EFAULT, never a SIGSEGV, whether it is unmapped before the call
 * or found so at a look between slices. */
static int test_unmapped_word(void)
{
    _Atomic uint32_t *page = pq_test_shared(4096);
    CHECK(page != NULL);
    CHECK_EQ(munmap((void *)page, 4096), 0);
    _Atomic uint32_t mine = 0;
    pq_wait_word w[2] = {{&mine, 0, 1}, {page, 0, 0}};
    CHECK_EQ(wait_fn(w, 2, pq_monotonic_ns() + 1000000000LL), -EFAULT);
    return 0;
}

/* The second of three shared words is woken by a child process. */
static int test_shared_wake_across_fork(void)
{
    _Atomic uint32_t *words = pq_test_shared(4096);
    CHECK(words != NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_test_sleep_ms(30);
        atomic_store(&words[1], 1);
        CHILD_CHECK(pq_futex_wake(&words[1], 1) >= 0);
        _exit(0);
    }
    pq_wait_word w[3] = {{&words[0], 0, 0}, {&words[1], 0, 0}, {&words[2], 0, 0}};
    int rc;
    /* The child may store before we park (then 3: the word differed). */
    do
        rc = wait_fn(w, 3, pq_monotonic_ns() + 5000000000LL);
    while (rc == -EINTR);
    CHECK(rc == 1 || rc == 3);
    CHECK_EQ(atomic_load(&words[1]), 1);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    munmap((void *)words, 4096);
    return 0;
}

static _Atomic uint32_t private_word;

static void *bump_private(void *arg)
{
    (void)arg;
    pq_test_sleep_ms(20);
    atomic_fetch_add(&private_word, 1);
    syscall(SYS_futex, (uint32_t *)&private_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    return NULL;
}

static int test_private_wake(void)
{
    _Atomic uint32_t other = 0;
    uint32_t seen = atomic_load(&private_word);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, bump_private, NULL), 0);
    pq_wait_word w[2] = {{&other, 0, 0}, {&private_word, seen, 1}};
    int rc = wait_fn(w, 2, pq_monotonic_ns() + 5000000000LL);
    CHECK(rc == 1 || rc == 2);
    CHECK(atomic_load(&private_word) != seen);
    CHECK_EQ(pthread_join(th, NULL), 0);
    return 0;
}

/* A pq_event in shared memory: registered with pq_event_prepare, its seq
 * word parked on here, notified by another process. */
static int test_event_notify(void)
{
    pq_event *ev = pq_test_shared(4096);
    CHECK(ev != NULL);
    uint32_t seq = pq_event_prepare(ev);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_test_sleep_ms(20);
        pq_event_notify(ev, 1);
        _exit(0);
    }
    pq_wait_word w[1] = {{&ev->seq, seq, 0}};
    int rc;
    do
        rc = wait_fn(w, 1, pq_monotonic_ns() + 5000000000LL);
    while (rc == -EINTR);
    CHECK(rc == 0 || rc == 1);
    CHECK(atomic_load(&ev->seq) != seq);
    pq_event_finish(ev);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    munmap(ev, 4096);
    return 0;
}

int main(void)
{
    RUN(test_timeout);
    RUN(test_changed_word);
    RUN(test_bad_count);
    RUN(test_unmapped_word);
    RUN(test_shared_wake_across_fork);
    RUN(test_private_wake);
    RUN(test_event_notify);
    wait_fn = pq_wait_words_sliced;
    RUN(test_timeout);
    RUN(test_changed_word);
    RUN(test_bad_count);
    RUN(test_unmapped_word);
    RUN(test_shared_wake_across_fork);
    RUN(test_private_wake);
    RUN(test_event_notify);
    return 0;
}
