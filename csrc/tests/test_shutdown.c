/*
 * test_shutdown.c - the shutdown flag (pq_shutdown.h) and its wake, per
 * kind: a waiter parked with no deadline in another process returns when
 * the segment is shut down (the wake), and a wait that starts after the
 * shutdown does not park at all (the flag in the wait condition). Each
 * waiter is a forked child with an alarm: a waiter that stays parked dies
 * of SIGALRM and the test fails instead of hanging.
 */
#include "pq_test.h"

#include "../pq_log.h"
#include "../pq_ring.h"
#include "../pq_shutdown.h"
#include "../pq_topic.h"
#include "../pq_wq.h"

#define ALARM_S 10

/* The flag only rises; IMMEDIATE is kept; bad values are refused. */
static int test_flag(void)
{
    pq_segment_header *h = calloc(1, PQ_SEGMENT_HEADER_BYTES);
    CHECK(h != NULL);
    CHECK_EQ(pq_shutdown_state(h), 0);
    CHECK_EQ(pq_shutdown_set(h, 0), -EINVAL);
    CHECK_EQ(pq_shutdown_set(h, PQ_SHUTDOWN_IMMEDIATE), -EINVAL); /* without DRAIN */
    CHECK_EQ(pq_shutdown_set(h, 4 | PQ_SHUTDOWN_DRAIN), -EINVAL);
    CHECK_EQ(pq_shutdown_set(NULL, PQ_SHUTDOWN_DRAIN), -EINVAL);
    CHECK_EQ(pq_shutdown_state(h), 0);
    CHECK_EQ(pq_shutdown_set(h, PQ_SHUTDOWN_DRAIN), 0);
    CHECK_EQ(pq_shutdown_state(h), PQ_SHUTDOWN_DRAIN);
    CHECK_EQ(pq_shutdown_set(h, PQ_SHUTDOWN_DRAIN | PQ_SHUTDOWN_IMMEDIATE), PQ_SHUTDOWN_DRAIN);
    CHECK_EQ(pq_shutdown_set(h, PQ_SHUTDOWN_DRAIN), PQ_SHUTDOWN_DRAIN | PQ_SHUTDOWN_IMMEDIATE);
    CHECK_EQ(pq_shutdown_seen(h), PQ_SHUTDOWN_DRAIN | PQ_SHUTDOWN_IMMEDIATE);
    free(h);
    return 0;
}

/* The kinds under test, behind one interface. */
enum { K_RING, K_RING_PUT, K_TOPIC, K_WQ, K_LOG, K_KINDS };
static const char *kind_names[K_KINDS] = {"ring get", "ring put", "topic", "work queue", "log"};

struct seg {
    void *base;
    size_t size;
    pq_ring r;
    pq_topic t;
    pq_topic_sub sub;
    pq_wq q;
    pq_log l;
};

static int seg_make(struct seg *s, int kind)
{
    memset(s, 0, sizeof *s);
    switch (kind) {
    case K_RING:
    case K_RING_PUT:
        s->size = pq_ring_segment_size(PQ_RING_MIN_CAPACITY);
        break;
    case K_TOPIC:
        s->size = pq_topic_segment_size(4096);
        break;
    case K_WQ:
        s->size = pq_wq_segment_size(4096, 16, 0);
        break;
    default:
        s->size = pq_log_segment_size(2, 4096);
    }
    CHECK(s->size > 0);
    s->base = pq_test_shared(s->size);
    CHECK(s->base != NULL);
    switch (kind) {
    case K_RING:
    case K_RING_PUT:
        CHECK_EQ(pq_ring_create(s->base, s->size, PQ_RING_MIN_CAPACITY, 1, NULL, 0), 0);
        CHECK_EQ(pq_ring_open(&s->r, s->base, s->size), 0);
        break;
    case K_TOPIC:
        CHECK_EQ(pq_topic_create(s->base, s->size, 4096, 0, NULL, 0), 0);
        CHECK_EQ(pq_topic_open(&s->t, s->base, s->size), 0);
        break;
    case K_WQ:
        CHECK_EQ(pq_wq_create(s->base, s->size, 4096, 16, 0, 1000000000, 3, 0, 0, 0, NULL, 0), 0);
        CHECK_EQ(pq_wq_open(&s->q, s->base, s->size), 0);
        break;
    default:
        CHECK_EQ(pq_log_create(s->base, s->size, 2, 4096, 0, 0), 0);
        CHECK_EQ(pq_log_open(&s->l, s->base, s->size), 0);
    }
    return 0;
}

/* The waiters registered on the event the kind's waiter parks on. */
static uint32_t seg_waiters(struct seg *s, int kind)
{
    switch (kind) {
    case K_RING:
        return pq_event_waiters(&s->r.ctl->readable);
    case K_RING_PUT:
        return pq_event_waiters(&s->r.ctl->writable);
    case K_TOPIC:
        return pq_event_waiters(&s->t.ctl->readable);
    case K_WQ:
        return pq_event_waiters(&s->q.ctl->readable);
    default:
        return pq_event_waiters(&s->l.shared->appended);
    }
}

/* One wait with no deadline and no spinning (in the child). */
static int seg_wait(struct seg *s, int kind)
{
    static const uint32_t parts[2] = {0, 1};
    static const uint64_t offsets[2] = {0, 0};
    switch (kind) {
    case K_RING:
        return pq_ring_wait_readable(&s->r, -1, 0);
    case K_RING_PUT:
        return pq_ring_wait_writable(&s->r, pq_ring_head(&s->r), -1, 0);
    case K_TOPIC:
        return pq_topic_wait_readable(&s->t, &s->sub, -1, 0);
    case K_WQ:
        return pq_wq_wait_readable(&s->q, atomic_load(&s->q.ctl->readable_seq), -1, 0);
    default:
        return pq_log_wait_any(&s->l, parts, offsets, 2, NULL, 0, -1, 0);
    }
}

static int seg_shutdown(struct seg *s, int kind, uint32_t how)
{
    switch (kind) {
    case K_RING:
    case K_RING_PUT:
        return pq_ring_shutdown(&s->r, how);
    case K_TOPIC:
        return pq_topic_shutdown(&s->t, how);
    case K_WQ:
        return pq_wq_shutdown(&s->q, how);
    default:
        return pq_log_shutdown(&s->l, how);
    }
}

/* A put that finds a maxsize-1 ring full (the writable waiter's setup). */
static int seg_prepare(struct seg *s, int kind)
{
    if (kind == K_RING_PUT) {
        uint32_t len = 8;
        uint64_t pos;
        CHECK_EQ(pq_ring_claim(&s->r, &len, 1, &pos), 0);
        pq_ring_commit(&s->r, pos, 0);
        CHECK_EQ(pq_ring_claim(&s->r, &len, 1, &pos), -EAGAIN);
    }
    if (kind == K_TOPIC)
        CHECK_EQ(pq_topic_subscribe(&s->t, &s->sub, 0), 0);
    return 0;
}

/* A waiter parked (no deadline) in another process wakes on shutdown. */
static int test_parked_waiter_wakes(int kind)
{
    struct seg s;
    if (seg_make(&s, kind))
        return 1;
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(ALARM_S);
        CHILD_CHECK(seg_prepare(&s, kind) == 0);
        /* Woken (0) with the flag raised; a spurious return re-waits. */
        for (int i = 0; i < 1000 && pq_shutdown_state(s.base) == 0; i++)
            CHILD_CHECK(seg_wait(&s, kind) == 0);
        CHILD_CHECK(pq_shutdown_state(s.base) == PQ_SHUTDOWN_DRAIN);
        _exit(0);
    }
    /* Until the child is registered on the event (its park follows). */
    int64_t until = pq_test_now_ns() + (int64_t)ALARM_S * 1000000000;
    while (seg_waiters(&s, kind) == 0 && pq_test_now_ns() < until)
        pq_test_sleep_ms(1);
    CHECK(seg_waiters(&s, kind) > 0);
    CHECK_EQ(seg_shutdown(&s, kind, PQ_SHUTDOWN_DRAIN), 0);
    int st = pq_test_wait_child(pid, (ALARM_S + 5) * 1000);
    if (st != 0)
        fprintf(stderr, "%s: waiter exit %d (%d = SIGALRM: never woken)\n", kind_names[kind], st,
                128 + SIGALRM);
    CHECK_EQ(st, 0);
    /* The flag stays in the segment: a new view sees it. */
    CHECK_EQ(pq_shutdown_state(s.base), PQ_SHUTDOWN_DRAIN);
    CHECK_EQ(pq_segment_check(s.base, s.size, 0), 0);
    munmap(s.base, s.size);
    return 0;
}

/* A wait that starts after the shutdown returns at once (no deadline). */
static int test_late_waiter_does_not_park(int kind)
{
    struct seg s;
    if (seg_make(&s, kind))
        return 1;
    CHECK_EQ(seg_shutdown(&s, kind, PQ_SHUTDOWN_DRAIN | PQ_SHUTDOWN_IMMEDIATE), 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(ALARM_S);
        CHILD_CHECK(seg_prepare(&s, kind) == 0);
        CHILD_CHECK(seg_wait(&s, kind) == 0);
        _exit(0);
    }
    int st = pq_test_wait_child(pid, (ALARM_S + 5) * 1000);
    if (st != 0)
        fprintf(stderr, "%s: late waiter exit %d\n", kind_names[kind], st);
    CHECK_EQ(st, 0);
    munmap(s.base, s.size);
    return 0;
}

static int test_all_kinds(void)
{
    for (int k = 0; k < K_KINDS; k++) {
        if (test_parked_waiter_wakes(k) || test_late_waiter_does_not_park(k)) {
            fprintf(stderr, "kind: %s\n", kind_names[k]);
            return 1;
        }
    }
    return 0;
}

int main(void)
{
    RUN(test_flag);
    RUN(test_all_kinds);
    return 0;
}
