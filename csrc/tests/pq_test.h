/*
 * pq_test.h - the little the C core's tests share (liburing style: one
 * program per primitive, each returning 0 on success and 1 on the first
 * failure, with file:line and the failed expression on stderr).
 *
 * Every test is an `int fn(void)` returning 0 on success; CHECK(cond) and
 * CHECK_EQ(a, b) report file:line and `return 1` from the enclosing
 * function, RUN(fn) makes main return 1 when fn fails. In a forked child,
 * CHILD_CHECK(cond) reports and _exit(1)s instead. The library itself
 * never prints; the tests may.
 */
#ifndef PQ_TEST_H
#define PQ_TEST_H

#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int pq_test_failed;

#define PQ_FAIL_MSG(cond)                                                                    \
    fprintf(stderr, "%s:%d: [pid %d] CHECK failed: %s (errno %d)\n", __FILE__, __LINE__,    \
            (int)getpid(), #cond, errno)

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            PQ_FAIL_MSG(cond);                                                               \
            pq_test_failed = 1;                                                              \
            return 1;                                                                        \
        }                                                                                    \
    } while (0)

/* CHECK with the two sides of an integer comparison printed. */
#define CHECK_EQ(a, b)                                                                       \
    do {                                                                                     \
        long long pq_a_ = (long long)(a), pq_b_ = (long long)(b);                            \
        if (pq_a_ != pq_b_) {                                                                \
            fprintf(stderr, "%s:%d: [pid %d] CHECK_EQ failed: %s == %s (%lld != %lld)\n",    \
                    __FILE__, __LINE__, (int)getpid(), #a, #b, pq_a_, pq_b_);                \
            pq_test_failed = 1;                                                              \
            return 1;                                                                        \
        }                                                                                    \
    } while (0)

#define CHILD_CHECK(cond)                                                                    \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            PQ_FAIL_MSG(cond);                                                               \
            _exit(1);                                                                        \
        }                                                                                    \
    } while (0)

/* Run a test function: int fn(void), 0 on success. */
#define RUN(fn)                                                                              \
    do {                                                                                     \
        int64_t pq_t0_ = pq_test_now_ns();                                                   \
        if ((fn)() != 0) {                                                                   \
            fprintf(stderr, "FAIL %s\n", #fn);                                               \
            return 1;                                                                        \
        }                                                                                    \
        printf("  ok  %-40s %7.1f ms\n", #fn, (double)(pq_test_now_ns() - pq_t0_) / 1e6); \
        fflush(stdout);                                                                      \
    } while (0)

static inline int64_t pq_test_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void pq_test_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* An anonymous shared mapping, zeroed; NULL on failure. */
static inline void *pq_test_shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Wait for a child; its exit status (0..255), 128+signal when killed, or
 * -1 when it is still running after timeout_ms (it is then SIGKILLed). */
/* Resident pages of [addr, addr + len) (page-aligned addr; mincore):
 * (size_t)-1 on error or when len spans more than 64 pages. */
static inline size_t pq_test_resident(const void *addr, size_t len)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), n = len / page;
    unsigned char vec[64];
    size_t count = 0;
    if (n > sizeof vec || mincore((void *)addr, len, vec) != 0)
        return (size_t)-1;
    for (size_t i = 0; i < n; i++)
        count += vec[i] & 1;
    return count;
}

static inline int pq_test_wait_child(pid_t pid, int timeout_ms)
{
    int64_t deadline = pq_test_now_ns() + (int64_t)timeout_ms * 1000000;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            return -2;
        if (pq_test_now_ns() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        pq_test_sleep_ms(1);
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -3;
}

/* xorshift64*: a small deterministic PRNG for sizes and payloads. */
static inline uint64_t pq_test_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* The seed: PQ_TEST_SEED from the environment, or a fixed one. Printed so
 * that a failure can be replayed. */
static inline uint64_t pq_test_seed(void)
{
    const char *s = getenv("PQ_TEST_SEED");
    uint64_t seed = s ? strtoull(s, NULL, 0) : 0x9E3779B97F4A7C15ULL;
    if (seed == 0)
        seed = 1;
    return seed;
}

static inline int pq_test_result(void)
{
    return pq_test_failed ? 1 : 0;
}

#endif /* PQ_TEST_H */
