/* test_topic.c - the broadcast ring of pyqueue.Topic (pq_topic.h). */
#include "pq_test.h"

#include "../pq_proc.h"
#include "../pq_topic.h"

#define CAP 4096u

static void *make_topic(uint64_t cap, int mode, pq_topic *t)
{
    size_t size = pq_topic_segment_size(cap);
    void *base = pq_test_shared(size);
    if (base == NULL || pq_topic_create(base, size, cap, mode, NULL, 0) != 0 ||
        pq_topic_open(t, base, size) != 0)
        return NULL;
    return base;
}

/* Publish one 8-byte message carrying v; waits (spinning on the wait call)
 * for room. */
static int publish(pq_topic *t, uint64_t v, uint32_t len, int64_t timeout_ms)
{
    uint64_t pos, needed;
    int64_t deadline = pq_test_now_ns() + timeout_ms * 1000000;
    for (;;) {
        int rc = pq_topic_claim(t, &len, 1, &pos, &needed);
        if (rc == 0)
            break;
        if (rc != -EAGAIN)
            return rc;
        rc = pq_topic_wait_writable(t, needed, deadline, 1000);
        if (rc == -ETIMEDOUT)
            return rc;
    }
    memset(pq_topic_payload(t, pos), 0, len);
    memcpy(pq_topic_payload(t, pos), &v, sizeof v);
    pq_topic_commit(t, pos, 1);
    pq_topic_notify_readable(t);
    return 0;
}

/* Read one message: 0 and *v, -EAGAIN at timeout. */
static int receive(pq_topic *t, pq_topic_sub *s, uint64_t *v, int64_t timeout_ms)
{
    pq_topic_record rec;
    pq_topic_batch b;
    int64_t deadline = pq_test_now_ns() + timeout_ms * 1000000;
    for (;;) {
        int rc = pq_topic_peek(t, s, &rec, 1, &b);
        if (rc >= 0) {
            uint64_t x = 0;
            if (rc == 1)
                memcpy(&x, rec.payload, sizeof x);
            if (pq_topic_advance(t, s, &b) != 0)
                continue;
            if (rc == 1) {
                *v = x;
                return 0;
            }
            continue;
        }
        if (rc != -EAGAIN && rc != -EINPROGRESS)
            return rc;
        if (pq_topic_wait_readable(t, s, deadline < pq_test_now_ns() + 50000000
                                               ? deadline : pq_test_now_ns() + 50000000,
                                   1000) == -ETIMEDOUT) {
            if (pq_test_now_ns() >= deadline)
                return -EAGAIN;
            pq_topic_repair(t, s);
        }
    }
}

#define FAN_SUBS 4
#define FAN_MSGS 20000

static int test_fanout(void)
{
    pq_topic t;
    void *base = make_topic(CAP, PQ_TOPIC_LOSSLESS, &t);
    CHECK(base != NULL);
    volatile int *ready = pq_test_shared(4096);
    pid_t kids[FAN_SUBS];
    for (int k = 0; k < FAN_SUBS; k++) {
        kids[k] = fork();
        CHECK(kids[k] >= 0);
        if (kids[k] == 0) {
            pq_topic_sub s;
            CHILD_CHECK(pq_topic_subscribe(&t, &s, PQ_TOPIC_START_LATEST) == 0);
            __atomic_add_fetch(ready, 1, __ATOMIC_SEQ_CST);
            for (uint64_t i = 0; i < FAN_MSGS; i++) {
                uint64_t v;
                CHILD_CHECK(receive(&t, &s, &v, 20000) == 0);
                CHILD_CHECK(v == i);
            }
            CHILD_CHECK(pq_topic_lag(&t, &s) == 0);
            CHILD_CHECK(pq_topic_unsubscribe(&t, &s) == 0);
            _exit(0);
        }
    }
    while (__atomic_load_n(ready, __ATOMIC_SEQ_CST) < FAN_SUBS)
        pq_test_sleep_ms(1);
    for (uint64_t i = 0; i < FAN_MSGS; i++)
        CHECK_EQ(publish(&t, i, 8 + (uint32_t)(i % 5) * 40, 20000), 0);
    for (int k = 0; k < FAN_SUBS; k++)
        CHECK_EQ(pq_test_wait_child(kids[k], 30000), 0);
    pq_topic_stats st;
    pq_topic_get_stats(&t, &st);
    CHECK_EQ(st.subscribers, 0);
    CHECK_EQ(st.published, FAN_MSGS);
    return 0;
}

static int test_backpressure_and_earliest(void)
{
    pq_topic t;
    CHECK(make_topic(CAP, PQ_TOPIC_LOSSLESS, &t) != NULL);
    pq_topic_sub s, late;
    CHECK_EQ(pq_topic_subscribe(&t, &s, PQ_TOPIC_START_LATEST), 0);
    uint64_t n = 0;
    uint32_t len = 100; /* 128-byte records: 32 fit */
    uint64_t pos, needed;
    while (pq_topic_claim(&t, &len, 1, &pos, &needed) == 0) {
        memcpy(pq_topic_payload(&t, pos), &n, 8);
        pq_topic_commit(&t, pos, 1);
        n++;
    }
    CHECK_EQ(n, CAP / 128);
    CHECK_EQ(pq_topic_lag(&t, &s), n);
    CHECK_EQ(pq_topic_wait_writable(&t, needed, pq_test_now_ns() + 5000000, 0), -ETIMEDOUT);
    /* earliest sees everything still in the ring; latest nothing. */
    CHECK_EQ(pq_topic_subscribe(&t, &late, PQ_TOPIC_START_EARLIEST), 0);
    uint64_t v;
    CHECK_EQ(receive(&t, &late, &v, 100), 0);
    CHECK_EQ(v, 0);
    CHECK_EQ(pq_topic_unsubscribe(&t, &late), 0);
    CHECK_EQ(pq_topic_subscribe(&t, &late, PQ_TOPIC_START_LATEST), 0);
    CHECK_EQ(receive(&t, &late, &v, 10), -EAGAIN);
    CHECK_EQ(pq_topic_unsubscribe(&t, &late), 0);
    /* Reading one makes room for one. */
    CHECK_EQ(receive(&t, &s, &v, 100), 0);
    CHECK_EQ(v, 0);
    CHECK_EQ(pq_topic_wait_writable(&t, needed, pq_test_now_ns() + 5000000, 0), 0);
    CHECK_EQ(pq_topic_claim(&t, &len, 1, &pos, &needed), 0);
    pq_topic_commit(&t, pos, 1);
    CHECK_EQ(pq_topic_claim(&t, &len, 1, &pos, &needed), -EAGAIN);
    for (uint64_t i = 1; i < n; i++) {
        CHECK_EQ(receive(&t, &s, &v, 100), 0);
        CHECK_EQ(v, i);
    }
    CHECK_EQ(pq_topic_unsubscribe(&t, &s), 0);
    return 0;
}

static int test_lossy_lapping(void)
{
    pq_topic t;
    CHECK(make_topic(CAP, PQ_TOPIC_LOSSY, &t) != NULL);
    pq_topic_sub s;
    CHECK_EQ(pq_topic_subscribe(&t, &s, PQ_TOPIC_START_LATEST), 0);
    /* 100 records of 128 bytes into a 32-record ring: 68 are lost. */
    for (uint64_t i = 0; i < 100; i++)
        CHECK_EQ(publish(&t, i, 100, 100), 0);
    uint64_t v;
    CHECK_EQ(receive(&t, &s, &v, 100), 0);
    CHECK_EQ(s.lost, 68);
    CHECK_EQ(v, 68);
    for (uint64_t i = 69; i < 100; i++) {
        CHECK_EQ(receive(&t, &s, &v, 100), 0);
        CHECK_EQ(v, i);
    }
    CHECK_EQ(receive(&t, &s, &v, 1), -EAGAIN);
    CHECK_EQ(pq_topic_lag(&t, &s), 0);
    CHECK_EQ(pq_topic_unsubscribe(&t, &s), 0);
    return 0;
}

/* A subscriber killed without reading stalls a lossless publisher until it
 * is evicted. */
static int test_dead_subscriber_evicted(void)
{
    pq_topic t;
    CHECK(make_topic(CAP, PQ_TOPIC_LOSSLESS, &t) != NULL);
    volatile int *ready = pq_test_shared(4096);
    pid_t kid = fork();
    CHECK(kid >= 0);
    if (kid == 0) {
        pq_topic_sub s;
        CHILD_CHECK(pq_topic_subscribe(&t, &s, PQ_TOPIC_START_LATEST) == 0);
        __atomic_store_n(ready, 1, __ATOMIC_SEQ_CST);
        for (;;)
            pause();
    }
    while (!__atomic_load_n(ready, __ATOMIC_SEQ_CST))
        pq_test_sleep_ms(1);
    uint32_t len = 100;
    uint64_t pos, needed;
    int n = 0;
    while (pq_topic_claim(&t, &len, 1, &pos, &needed) == 0) {
        pq_topic_commit(&t, pos, 1);
        n++;
    }
    CHECK_EQ(n, 32);
    CHECK_EQ(pq_topic_evict_dead(&t, needed), 0); /* alive: kept */
    kill(kid, SIGKILL);
    CHECK_EQ(pq_test_wait_child(kid, 5000), 128 + SIGKILL);
    CHECK_EQ(pq_topic_evict_dead(&t, needed), 1);
    CHECK_EQ(pq_topic_claim(&t, &len, 1, &pos, &needed), 0);
    pq_topic_commit(&t, pos, 1);
    pq_topic_stats st;
    pq_topic_get_stats(&t, &st);
    CHECK_EQ(st.subscribers, 0);
    return 0;
}

/* A publisher killed between claim and commit: its record is abandoned and
 * subscribers pass it. */
static int test_dead_publisher_repaired(void)
{
    pq_topic t;
    CHECK(make_topic(CAP, PQ_TOPIC_LOSSLESS, &t) != NULL);
    pq_topic_sub s;
    CHECK_EQ(pq_topic_subscribe(&t, &s, PQ_TOPIC_START_LATEST), 0);
    pid_t kid = fork();
    CHECK(kid >= 0);
    if (kid == 0) {
        uint32_t len = 8;
        uint64_t pos;
        CHILD_CHECK(pq_topic_claim(&t, &len, 1, &pos, NULL) == 0);
        raise(SIGKILL);
        _exit(1);
    }
    CHECK_EQ(pq_test_wait_child(kid, 5000), 128 + SIGKILL);
    CHECK_EQ(publish(&t, 42, 8, 100), 0);
    pq_topic_record rec;
    pq_topic_batch b;
    CHECK_EQ(pq_topic_peek(&t, &s, &rec, 1, &b), -EINPROGRESS);
    uint64_t v = 0;
    CHECK_EQ(receive(&t, &s, &v, 2000), 0); /* repairs after a wait slice */
    CHECK_EQ(v, 42);
    CHECK_EQ(pq_topic_lag(&t, &s), 0);
    CHECK_EQ(pq_topic_unsubscribe(&t, &s), 0);
    return 0;
}

static int test_bad_args(void)
{
    pq_topic t;
    void *base = make_topic(CAP, PQ_TOPIC_LOSSLESS, &t);
    CHECK(base != NULL);
    uint32_t big = CAP / 4;
    uint64_t pos;
    CHECK_EQ(pq_topic_claim(&t, &big, 1, &pos, NULL), -EMSGSIZE);
    CHECK_EQ(pq_topic_claim(&t, &big, 0, &pos, NULL), -EINVAL);
    pq_topic other;
    CHECK_EQ(pq_topic_open(&other, base, 100), PQ_ERR_TRUNCATED);
    pq_topic_sub subs[PQ_TOPIC_SUBS + 1];
    for (int i = 0; i < PQ_TOPIC_SUBS; i++)
        CHECK_EQ(pq_topic_subscribe(&t, &subs[i], PQ_TOPIC_START_LATEST), 0);
    CHECK_EQ(pq_topic_subscribe(&t, &subs[PQ_TOPIC_SUBS], PQ_TOPIC_START_LATEST), -ENOSPC);
    for (int i = 0; i < PQ_TOPIC_SUBS; i++)
        CHECK_EQ(pq_topic_unsubscribe(&t, &subs[i]), 0);
    return 0;
}

int main(void)
{
    printf("test_topic\n");
    RUN(test_bad_args);
    RUN(test_fanout);
    RUN(test_backpressure_and_earliest);
    RUN(test_lossy_lapping);
    RUN(test_dead_subscriber_evicted);
    RUN(test_dead_publisher_repaired);
    return pq_test_result();
}
