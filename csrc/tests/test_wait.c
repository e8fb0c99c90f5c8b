/*
 * test_wait.c - shared futex words and pq_event: deadlines on
 * CLOCK_MONOTONIC, wake-ups across fork(), the waiter count that spares
 * the notifier its system call, the prepare/park/finish handshake, and a
 * ping-pong across processes that would hang on a lost wake-up.
 */
#include "pq_test.h"

#include "../pq_wait.h"

/* Slack allowed past a deadline: a loaded CI machine (or ASan) may be
 * slow to schedule the woken thread, but not by this much. */
#define LATE_NS (400 * 1000000LL)

typedef struct shared {
    _Atomic uint32_t word;
    _Atomic uint32_t flag;
    _Atomic uint32_t ping, pong;
    pq_event ev;
    pq_event ping_ev, pong_ev;
    _Atomic int64_t child_elapsed;
} shared;

static int test_monotonic(void)
{
    int64_t a = pq_monotonic_ns();
    int64_t b = pq_test_now_ns();
    int64_t c = pq_monotonic_ns();
    CHECK(a > 0);
    CHECK(a <= b && b <= c);
    return 0;
}

static int test_futex_timeout(void)
{
    _Atomic uint32_t word = 0;
    static const int64_t timeouts[] = {1000000, 20000000, 60000000};
    for (size_t i = 0; i < sizeof timeouts / sizeof timeouts[0]; i++) {
        int64_t t0 = pq_monotonic_ns();
        int rc = pq_futex_wait(&word, 0, t0 + timeouts[i]);
        int64_t elapsed = pq_monotonic_ns() - t0;
        CHECK_EQ(rc, -ETIMEDOUT);
        CHECK(elapsed >= timeouts[i]);
        CHECK(elapsed < timeouts[i] + LATE_NS);
    }
    /* A deadline already passed: no wait at all. */
    int64_t t0 = pq_monotonic_ns();
    CHECK_EQ(pq_futex_wait(&word, 0, t0 - 1), -ETIMEDOUT);
    CHECK_EQ(pq_futex_wait(&word, 0, 0), -ETIMEDOUT);
    CHECK(pq_monotonic_ns() - t0 < LATE_NS);
    return 0;
}

static int test_futex_changed_word(void)
{
    _Atomic uint32_t word = 5;
    int64_t t0 = pq_monotonic_ns();
    /* The word does not hold the expected value: return at once, 0. */
    CHECK_EQ(pq_futex_wait(&word, 4, t0 + 5000000000LL), 0);
    CHECK_EQ(pq_futex_wait(&word, 4, -1), 0); /* even with no deadline */
    CHECK(pq_monotonic_ns() - t0 < LATE_NS);
    /* Nobody waits: wake reports 0 woken. */
    CHECK_EQ(pq_futex_wake(&word, 1), 0);
    return 0;
}

static void on_alarm(int sig)
{
    (void)sig;
}

static int test_futex_eintr(void)
{
    _Atomic uint32_t word = 0;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGALRM, &sa, &old) == 0);

    timer_t timer;
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGALRM;
    CHECK(timer_create(CLOCK_MONOTONIC, &sev, &timer) == 0);
    struct itimerspec its = {{0, 0}, {0, 20000000}};
    CHECK(timer_settime(timer, 0, &its, NULL) == 0);

    int64_t t0 = pq_monotonic_ns();
    int rc = pq_futex_wait(&word, 0, t0 + 5000000000LL);
    int64_t elapsed = pq_monotonic_ns() - t0;
    timer_delete(timer);
    sigaction(SIGALRM, &old, NULL);
    CHECK_EQ(rc, -EINTR);
    CHECK(elapsed < 5000000000LL / 2);
    return 0;
}

/* A child parks on a shared word; the parent changes it and wakes it. */
static int test_futex_wake_across_fork(void)
{
    shared *s = pq_test_shared(sizeof *s);
    CHECK(s != NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int64_t t0 = pq_monotonic_ns();
        while (atomic_load(&s->word) == 0) {
            int rc = pq_futex_wait(&s->word, 0, t0 + 10000000000LL);
            CHILD_CHECK(rc == 0);
        }
        atomic_store(&s->child_elapsed, pq_monotonic_ns() - t0 + 1);
        _exit(0);
    }
    /* Wake until somebody was parked to be woken (the child may not have
     * reached the futex yet), at most 10 s. */
    int64_t t0 = pq_monotonic_ns();
    pq_test_sleep_ms(20);
    atomic_store(&s->word, 1);
    int woken = 0;
    while (pq_monotonic_ns() - t0 < 10000000000LL) {
        int rc = pq_futex_wake(&s->word, 1);
        CHECK(rc >= 0);
        woken += rc;
        if (rc > 0 || atomic_load(&s->child_elapsed) != 0) /* woken, or saw the word first */
            break;
        pq_test_sleep_ms(1);
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK(woken <= 1);
    /* It returned soon after the change, not at its 10 s deadline. */
    CHECK(atomic_load(&s->child_elapsed) < 5000000000LL);
    munmap(s, sizeof *s);
    return 0;
}

static int test_event_no_waiter_no_wake(void)
{
    pq_event ev = {0, 0};
    /* No waiter: notify neither bumps seq nor makes a system call. */
    for (int i = 0; i < 10; i++)
        pq_event_notify(&ev, 1);
    CHECK_EQ(atomic_load(&ev.seq), 0);
    CHECK_EQ(pq_event_waiters(&ev), 0);

    /* A registered waiter: notify bumps seq, so its park returns at once. */
    uint32_t seq = pq_event_prepare(&ev);
    CHECK_EQ(pq_event_waiters(&ev), 1);
    pq_event_notify(&ev, 1);
    CHECK_EQ(atomic_load(&ev.seq), seq + 1);
    int64_t t0 = pq_monotonic_ns();
    CHECK_EQ(pq_event_park(&ev, seq, t0 + 5000000000LL), 0);
    CHECK(pq_monotonic_ns() - t0 < LATE_NS);
    pq_event_finish(&ev);
    CHECK_EQ(pq_event_waiters(&ev), 0);

    /* Unregistered again: back to no bump. */
    pq_event_notify(&ev, 1);
    CHECK_EQ(atomic_load(&ev.seq), seq + 1);

    /* Park with the current seq and nobody to notify: times out. */
    seq = pq_event_prepare(&ev);
    t0 = pq_monotonic_ns();
    CHECK_EQ(pq_event_park(&ev, seq, t0 + 10000000), -ETIMEDOUT);
    CHECK(pq_monotonic_ns() - t0 >= 10000000);
    pq_event_finish(&ev);
    return 0;
}

/* The waiting side as pq_wait.h spells it: prepare, re-check, park, finish. */
static int wait_flag(pq_event *ev, _Atomic uint32_t *flag, uint32_t want, int64_t deadline)
{
    for (;;) {
        if (atomic_load(flag) == want)
            return 0;
        uint32_t seq = pq_event_prepare(ev);
        int rc = 0;
        if (atomic_load(flag) != want)
            rc = pq_event_park(ev, seq, deadline);
        pq_event_finish(ev);
        if (rc == -ETIMEDOUT)
            return rc;
    }
}

static int test_event_handshake_child(void)
{
    shared *s = pq_test_shared(sizeof *s);
    CHECK(s != NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int64_t t0 = pq_monotonic_ns();
        CHILD_CHECK(wait_flag(&s->ev, &s->flag, 1, t0 + 10000000000LL) == 0);
        atomic_store(&s->child_elapsed, pq_monotonic_ns() - t0);
        _exit(0);
    }
    /* Let the child register and park, then make the condition true. */
    int64_t t0 = pq_monotonic_ns();
    while (pq_event_waiters(&s->ev) == 0 && pq_monotonic_ns() - t0 < 5000000000LL)
        pq_test_sleep_ms(1);
    CHECK_EQ(pq_event_waiters(&s->ev), 1);
    pq_test_sleep_ms(10);
    atomic_store(&s->flag, 1);
    pq_event_notify(&s->ev, 1);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK(atomic_load(&s->child_elapsed) < 5000000000LL);
    CHECK_EQ(pq_event_waiters(&s->ev), 0);
    munmap(s, sizeof *s);
    return 0;
}

/*
 * Ping-pong between two processes, each parking for the other's answer:
 * a lost wake-up in the prepare/notify handshake leaves one side parked
 * until its deadline, which fails the test. Both sides spin a little
 * before they park, sometimes not at all, to vary the interleavings.
 */
static int test_event_pingpong(void)
{
    const uint32_t rounds = 20000;
    shared *s = pq_test_shared(sizeof *s);
    CHECK(s != NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        for (uint32_t i = 1; i <= rounds; i++) {
            CHILD_CHECK(wait_flag(&s->ping_ev, &s->ping, i, pq_monotonic_ns() + 5000000000LL) == 0);
            atomic_store(&s->pong, i);
            pq_event_notify(&s->pong_ev, 1);
        }
        _exit(0);
    }
    int64_t t0 = pq_monotonic_ns();
    for (uint32_t i = 1; i <= rounds; i++) {
        atomic_store(&s->ping, i);
        pq_event_notify(&s->ping_ev, 1);
        for (uint32_t k = 0; k < (i % 7) * 50 && atomic_load(&s->pong) != i; k++)
            pq_cpu_relax();
        CHECK_EQ(wait_flag(&s->pong_ev, &s->pong, i, pq_monotonic_ns() + 5000000000LL), 0);
    }
    int64_t elapsed = pq_monotonic_ns() - t0;
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    printf("       %u round trips in %.1f ms\n", rounds, (double)elapsed / 1e6);
    munmap(s, sizeof *s);
    return 0;
}

/* notify(n) wakes at most n of several parked processes. */
static int test_event_wake_n(void)
{
    enum { KIDS = 3 };
    shared *s = pq_test_shared(sizeof *s);
    pid_t pids[KIDS];
    CHECK(s != NULL);
    for (int k = 0; k < KIDS; k++) {
        pids[k] = fork();
        CHECK(pids[k] >= 0);
        if (pids[k] == 0) {
            CHILD_CHECK(wait_flag(&s->ev, &s->flag, 1, pq_monotonic_ns() + 10000000000LL) == 0);
            atomic_fetch_add(&s->word, 1);
            _exit(0);
        }
    }
    int64_t t0 = pq_monotonic_ns();
    while (pq_event_waiters(&s->ev) < KIDS && pq_monotonic_ns() - t0 < 5000000000LL)
        pq_test_sleep_ms(1);
    CHECK_EQ(pq_event_waiters(&s->ev), KIDS);
    pq_test_sleep_ms(20); /* into the futex */
    atomic_store(&s->flag, 1);
    pq_event_notify(&s->ev, INT32_MAX);
    for (int k = 0; k < KIDS; k++)
        CHECK_EQ(pq_test_wait_child(pids[k], 10000), 0);
    CHECK_EQ(atomic_load(&s->word), KIDS);
    munmap(s, sizeof *s);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("test_wait\n");
    RUN(test_monotonic);
    RUN(test_futex_timeout);
    RUN(test_futex_changed_word);
    RUN(test_futex_eintr);
    RUN(test_futex_wake_across_fork);
    RUN(test_event_no_waiter_no_wake);
    RUN(test_event_handshake_child);
    RUN(test_event_pingpong);
    RUN(test_event_wake_n);
    return pq_test_result();
}
