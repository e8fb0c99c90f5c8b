/* test_wq.c - the acknowledged work queue (pq_wq.h): deliveries and acks,
 * nacks with delay, visibility timeouts, the delivery limit and dead
 * letters, dedup keys, room, processes that die holding messages, waits,
 * and several producers and consumers in processes. */
#include "pq_test.h"

#include "../pq_proc.h"
#include "../pq_wq.h"

#define MS 1000000LL

static void *make_wq(pq_wq *q, uint64_t cap, uint32_t slots, uint32_t dedup, int64_t vis_ns,
                     uint32_t max_deliveries, int64_t window_ns)
{
    size_t size = pq_wq_segment_size(cap, slots, dedup);
    void *base = size ? pq_test_shared(size) : NULL;
    if (base == NULL ||
        pq_wq_create(base, size, cap, slots, dedup, vis_ns, max_deliveries, window_ns, 0, 0,
                     "dlq", 3) != 0 ||
        pq_wq_open(q, base, size) != 0)
        return NULL;
    return base;
}

static int put(pq_wq *q, uint64_t v, int64_t delay_ns, uint64_t key, uint64_t *id)
{
    uint8_t *p;
    uint64_t seen;
    int rc = pq_wq_claim(q, sizeof v, 7, delay_ns, key, 1234, id, &p, &seen);
    if (rc != 0)
        return rc;
    memcpy(p, &v, sizeof v);
    pq_wq_commit(q, *id);
    return 0;
}

static uint64_t value_of(const pq_wq_delivery *d)
{
    uint64_t v;
    memcpy(&v, d->payload, sizeof v);
    return v;
}

static int test_deliver_ack_and_room(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 4, 0, 1000 * MS, 0, 0) != NULL);
    uint64_t id, ids[4];
    for (int i = 0; i < 4; i++)
        CHECK_EQ(put(&q, 100 + i, 0, 0, &ids[i]), 0);
    CHECK_EQ(ids[3], 3);
    CHECK_EQ(put(&q, 9, 0, 0, &id), -EAGAIN); /* 4 slots */
    pq_wq_delivery d[4];
    int64_t wake;
    uint64_t seen;
    for (int i = 0; i < 4; i++) {
        CHECK_EQ(pq_wq_acquire(&q, &d[i], &wake, &seen), 0);
        CHECK_EQ(d[i].id, (uint64_t)i);
        CHECK_EQ(value_of(&d[i]), 100 + i);
        CHECK_EQ(d[i].deliveries, 1);
        CHECK_EQ(d[i].type, 7);
        CHECK_EQ(d[i].enqueued_ms, 1234);
    }
    CHECK_EQ(pq_wq_acquire(&q, &d[0], &wake, &seen), -EAGAIN);
    CHECK(wake > 0); /* the first deadline */
    pq_wq_stats st;
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.in_flight, 4);
    /* Acks out of order: the head moves only past a done prefix. */
    CHECK_EQ(pq_wq_ack(&q, 1, 1), 0);
    CHECK_EQ(put(&q, 9, 0, 0, &id), -EAGAIN);
    CHECK_EQ(pq_wq_ack(&q, 0, 1), 0);
    CHECK_EQ(pq_wq_ack(&q, 0, 1), -ESTALE); /* twice */
    CHECK_EQ(put(&q, 9, 0, 0, &id), 0);
    CHECK_EQ(id, 4);
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.counters[PQ_WQ_ACKED], 2);
    CHECK_EQ(st.counters[PQ_WQ_ENQUEUED], 5);
    CHECK_EQ(st.available, 1);
    /* Bytes: a quarter of the area at most, and only what the head frees. */
    uint8_t *p;
    CHECK_EQ(pq_wq_claim(&q, 1025, 1, 0, 0, 0, &id, &p, &seen), -EMSGSIZE);
    return 0;
}

static int test_nack_delay_and_timeout(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 16, 0, 30 * MS, 0, 0) != NULL);
    uint64_t id, seen;
    pq_wq_delivery d;
    int64_t wake;
    CHECK_EQ(put(&q, 1, 0, 0, &id), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(pq_wq_nack(&q, d.id, d.deliveries, 40 * MS), 0);
    int64_t t0 = pq_test_now_ns();
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), -EAGAIN);
    CHECK(wake > t0 && wake <= t0 + 40 * MS);
    pq_test_sleep_ms(45);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(d.deliveries, 2);
    CHECK_EQ(d.reason, PQ_WQ_REASON_NACK);
    /* Not acked within 30 ms: delivered again, the old holder is fenced. */
    uint32_t old = d.deliveries;
    pq_test_sleep_ms(35);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(d.deliveries, 3);
    CHECK_EQ(d.reason, PQ_WQ_REASON_TIMEOUT);
    CHECK_EQ(pq_wq_ack(&q, d.id, old), -ESTALE);
    /* extend keeps it: no redelivery past the first deadline. */
    CHECK_EQ(pq_wq_extend(&q, d.id, d.deliveries, 500 * MS), 0);
    pq_test_sleep_ms(35);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), -EAGAIN);
    CHECK_EQ(pq_wq_ack(&q, 0, 3), 0);
    pq_wq_stats st;
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.counters[PQ_WQ_REDELIVERED], 2);
    CHECK_EQ(st.counters[PQ_WQ_ACKED], 1);
    /* A delayed put. */
    CHECK_EQ(put(&q, 2, 30 * MS, 0, &id), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), -EAGAIN);
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.delayed, 1);
    pq_test_sleep_ms(35);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(value_of(&d), 2);
    return 0;
}

static int test_delivery_limit_and_dead_letters(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 16, 0, 20 * MS, 2, 0) != NULL);
    uint64_t id, seen;
    pq_wq_delivery d;
    int64_t wake;
    /* By nacks: the second nack finds the limit and makes it DEAD. */
    CHECK_EQ(put(&q, 1, 0, 0, &id), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(pq_wq_nack(&q, d.id, d.deliveries, 0), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(d.deliveries, 2);
    CHECK_EQ(pq_wq_nack(&q, d.id, d.deliveries, 0), 1);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), -EAGAIN); /* being moved by us */
    CHECK_EQ(pq_wq_dead_done(&q, id), 0);
    CHECK_EQ(pq_wq_dead_done(&q, id), -ESTALE);
    /* By timeouts: the third acquire hands it over to be moved. */
    CHECK_EQ(put(&q, 2, 0, 0, &id), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    pq_test_sleep_ms(25);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(d.deliveries, 2);
    pq_test_sleep_ms(25);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 1);
    CHECK_EQ(d.id, id);
    CHECK_EQ(d.reason, PQ_WQ_REASON_TIMEOUT);
    CHECK_EQ(value_of(&d), 2);
    CHECK_EQ(pq_wq_dead_done(&q, id), 0);
    /* reject: straight there. */
    CHECK_EQ(put(&q, 3, 0, 0, &id), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(pq_wq_reject(&q, d.id, d.deliveries), 0);
    pq_wq_stats st;
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.dead, 1);
    CHECK_EQ(pq_wq_dead_done(&q, id), 0);
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.counters[PQ_WQ_DEAD_LETTERED], 3);
    CHECK_EQ(st.dead, 0);
    CHECK_EQ(st.used_bytes, 0); /* everything done: the head is at the tail */
    return 0;
}

static int test_dedup(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 16, 64, 1000 * MS, 0, 30 * MS) != NULL);
    uint64_t a = pq_wq_key_hash("order-1", 7), b = pq_wq_key_hash("order-2", 7);
    CHECK(a != b && a != 0);
    uint64_t id1, id2, id3;
    CHECK_EQ(put(&q, 1, 0, a, &id1), 0);
    CHECK_EQ(put(&q, 2, 0, a, &id2), 1); /* a duplicate */
    CHECK_EQ(id2, id1);
    CHECK_EQ(put(&q, 3, 0, b, &id3), 0);
    CHECK_EQ(put(&q, 4, 0, 0, &id3), 0); /* no key: never a duplicate */
    pq_wq_stats st;
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.counters[PQ_WQ_DEDUPED], 1);
    CHECK_EQ(st.counters[PQ_WQ_ENQUEUED], 3);
    CHECK_EQ(st.dedup_used, 2);
    /* Within the window a repeat is dropped whatever became of the first:
     * acked (the head passed it), or dead. */
    pq_wq_delivery d;
    int64_t wake;
    uint64_t seen;
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
        CHECK_EQ(i == 1 ? pq_wq_reject(&q, d.id, d.deliveries) : pq_wq_ack(&q, d.id, d.deliveries), 0);
    }
    CHECK_EQ(pq_wq_dead_done(&q, 1), 0);
    CHECK_EQ(q.ctl->head, 3); /* all done */
    CHECK_EQ(put(&q, 2, 0, a, &id2), 1);
    CHECK_EQ(id2, id1);
    CHECK_EQ(put(&q, 2, 0, b, &id2), 1);
    CHECK_EQ(id2, 1);
    pq_test_sleep_ms(35); /* out of the window */
    CHECK_EQ(put(&q, 5, 0, a, &id2), 0);
    CHECK(id2 != id1);
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.dedup_used, 1); /* the expired ones left the table */
    return 0;
}

/* Processes that die holding things: a consumer's message becomes
 * available again, a producer's claim is dropped (and its key is free), a
 * mover's dead letter goes to the next consumer to move. */
static int test_dead_holders(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 16, 64, 60000 * MS, 0, 60000 * MS) != NULL);
    uint64_t id, seen;
    pq_wq_delivery d;
    int64_t wake;
    CHECK_EQ(put(&q, 1, 0, 0, &id), 0);
    pid_t pid = fork();
    if (pid == 0) {
        pq_wq_delivery cd;
        int64_t w;
        uint64_t s;
        CHILD_CHECK(pq_wq_acquire(&q, &cd, &w, &s) == 0);
        _exit(0); /* dies holding it */
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), -EAGAIN);
    CHECK_EQ(pq_wq_reap(&q), 1);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(d.deliveries, 2);
    CHECK_EQ(d.reason, PQ_WQ_REASON_DIED);
    CHECK_EQ(pq_wq_ack(&q, d.id, 2), 0);
    /* A producer that claims and dies. */
    uint64_t key = pq_wq_key_hash("k", 1);
    pid = fork();
    if (pid == 0) {
        uint8_t *p;
        uint64_t cid, s;
        CHILD_CHECK(pq_wq_claim(&q, 8, 1, 0, key, 0, &cid, &p, &s) == 0);
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(pq_wq_reap(&q), 1);
    CHECK_EQ(put(&q, 7, 0, key, &id), 0); /* the retry is not a duplicate */
    pq_wq_stats st;
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.counters[PQ_WQ_ABANDONED], 1);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(value_of(&d), 7);
    /* A mover that dies: its dead letter goes to the next acquirer. */
    pid = fork();
    if (pid == 0) {
        CHILD_CHECK(pq_wq_reject(&q, d.id, d.deliveries) == -ESTALE); /* not its own */
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(pq_wq_nack(&q, d.id, d.deliveries, 0), 0);
    pid = fork();
    if (pid == 0) {
        pq_wq_delivery cd;
        int64_t w;
        uint64_t s;
        CHILD_CHECK(pq_wq_acquire(&q, &cd, &w, &s) == 0);
        CHILD_CHECK(pq_wq_reject(&q, cd.id, cd.deliveries) == 0);
        _exit(0); /* dies before moving it */
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), -EAGAIN);
    CHECK_EQ(pq_wq_reap(&q), 1);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 1);
    CHECK_EQ(d.reason, PQ_WQ_REASON_REJECTED);
    CHECK_EQ(pq_wq_dead_done(&q, d.id), 0);
    /* And one dies holding the lock. */
    pid = fork();
    if (pid == 0) {
        CHILD_CHECK(pthread_mutex_lock(&q.ctl->lock) == 0);
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(put(&q, 8, 0, 0, &id), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(value_of(&d), 8);
    return 0;
}

static int test_wait_readable_and_writable(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 2, 0, 1000 * MS, 0, 0) != NULL);
    pq_wq_delivery d;
    int64_t wake;
    uint64_t seen;
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), -EAGAIN);
    CHECK_EQ(pq_wq_wait_readable(&q, seen, pq_test_now_ns() + 20 * MS, 1000), -ETIMEDOUT);
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t cid;
        pq_test_sleep_ms(30);
        CHILD_CHECK(put(&q, 5, 0, 0, &cid) == 0);
        CHILD_CHECK(put(&q, 6, 0, 0, &cid) == 0);
        uint8_t *p;
        uint64_t s;
        int rc;
        while ((rc = pq_wq_claim(&q, 8, 1, 0, 0, 0, &cid, &p, &s)) == -EAGAIN)
            pq_wq_wait_writable(&q, s, pq_test_now_ns() + 10000 * MS, 0);
        CHILD_CHECK(rc == 0);
        memcpy(p, &(uint64_t){7}, 8);
        pq_wq_commit(&q, cid);
        _exit(0);
    }
    int64_t deadline = pq_test_now_ns() + 10000 * MS;
    CHECK_EQ(pq_wq_wait_readable(&q, seen, deadline, 0), 0);
    /* 5 and 6 fill both slots; 7 goes in once an ack makes room. */
    uint64_t got[3];
    for (int i = 0; i < 3; i++) {
        int rc;
        while ((rc = pq_wq_acquire(&q, &d, &wake, &seen)) == -EAGAIN)
            CHECK_EQ(pq_wq_wait_readable(&q, seen, deadline, 0), 0);
        CHECK_EQ(rc, 0);
        got[i] = value_of(&d);
        CHECK_EQ(pq_wq_ack(&q, d.id, d.deliveries), 0);
    }
    CHECK_EQ(got[0], 5);
    CHECK_EQ(got[1], 6);
    CHECK_EQ(got[2], 7);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    return 0;
}

#define MP_N 5000

/* 2 producers, 3 consumers that ack (one of them nacks every 7th message
 * once): every message is acked exactly once. */
static int test_producers_and_consumers(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 1u << 16, 256, 0, 5000 * MS, 0, 0) != NULL);
    _Atomic uint32_t *acked = pq_test_shared(2 * MP_N * sizeof(uint32_t));
    _Atomic uint32_t *done = pq_test_shared(64);
    CHECK(acked != NULL && done != NULL);
    pid_t kids[5];
    for (int w = 0; w < 2; w++) {
        kids[w] = fork();
        if (kids[w] == 0) {
            for (uint64_t i = 0; i < MP_N; i++) {
                uint64_t v = (uint64_t)w * MP_N + i, id, seen;
                uint8_t *p;
                int rc;
                while ((rc = pq_wq_claim(&q, 8, 1, 0, 0, 0, &id, &p, &seen)) == -EAGAIN)
                    pq_wq_wait_writable(&q, seen, pq_test_now_ns() + 1000 * MS, 0);
                CHILD_CHECK(rc == 0);
                memcpy(p, &v, 8);
                pq_wq_commit(&q, id);
            }
            _exit(0);
        }
    }
    for (int c = 0; c < 3; c++) {
        kids[2 + c] = fork();
        if (kids[2 + c] == 0) {
            pq_wq_delivery d;
            int64_t wake;
            uint64_t seen;
            int64_t deadline = pq_test_now_ns() + 60000 * MS;
            while (atomic_load(done) < 2 * MP_N && pq_test_now_ns() < deadline) {
                int rc = pq_wq_acquire(&q, &d, &wake, &seen);
                if (rc == -EAGAIN) {
                    pq_wq_wait_readable(&q, seen, pq_test_now_ns() + 20 * MS, 10000);
                    continue;
                }
                CHILD_CHECK(rc == 0);
                uint64_t v = value_of(&d);
                CHILD_CHECK(v < 2 * MP_N);
                if (c == 0 && v % 7 == 0 && d.deliveries == 1) {
                    CHILD_CHECK(pq_wq_nack(&q, d.id, d.deliveries, 0) == 0);
                    continue;
                }
                CHILD_CHECK(pq_wq_ack(&q, d.id, d.deliveries) == 0);
                atomic_fetch_add(&acked[v], 1);
                atomic_fetch_add(done, 1);
            }
            _exit(0);
        }
    }
    for (int k = 0; k < 5; k++)
        CHECK_EQ(pq_test_wait_child(kids[k], 90000), 0);
    for (int v = 0; v < 2 * MP_N; v++)
        CHECK_EQ(atomic_load(&acked[v]), 1);
    pq_wq_stats st;
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.counters[PQ_WQ_ACKED], 2 * MP_N);
    CHECK(st.counters[PQ_WQ_REDELIVERED] > 0);
    CHECK_EQ(st.used_bytes, 0);
    return 0;
}

/* Holders that die inside a change under the lock (the review's cases):
 * the queue goes on, room and keys are right, waiters are woken. */
static int test_deaths_inside_the_lock(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 4, 64, 60000 * MS, 0, 60000 * MS) != NULL);
    uint64_t id, seen;
    pq_wq_delivery d;
    int64_t wake;
    CHECK_EQ(put(&q, 1, 0, 0, &id), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    /* Dies in the head's pass: the done slot FREE, the head not moved. */
    pid_t pid = fork();
    if (pid == 0) {
        CHILD_CHECK(pthread_mutex_lock(&q.ctl->lock) == 0);
        atomic_store(&q.slots[0].state, PQ_WQ_FREE);
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    for (int i = 0; i < 4; i++) /* all 4 slots: the head got past it */
        CHECK_EQ(put(&q, 10 + i, 0, 0, &id), 0);
    CHECK_EQ(q.ctl->head, 1);
    /* Dies after an ack's DONE store: the next locker passes it and wakes
     * a producer waiting for room. */
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(value_of(&d), 10);
    uint64_t ws;
    uint8_t *p;
    CHECK_EQ(pq_wq_claim(&q, 8, 1, 0, 0, 0, &id, &p, &ws), -EAGAIN);
    pid_t waiter = fork();
    if (waiter == 0) {
        int rc = pq_wq_wait_writable(&q, ws, pq_test_now_ns() + 10000 * MS, 0);
        _exit(rc == 0 ? 0 : 3);
    }
    pid = fork();
    if (pid == 0) {
        CHILD_CHECK(pthread_mutex_lock(&q.ctl->lock) == 0);
        atomic_store(&q.slots[1].state, PQ_WQ_DONE);
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    pq_wq_stats st;
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0); /* takes the lock: recovers */
    CHECK_EQ(pq_test_wait_child(waiter, 10000), 0);
    CHECK_EQ(put(&q, 20, 0, 0, &id), 0);
    /* Dies inside a change of the dedup index (dirty, cells gone): the
     * next keyed put rebuilds it from the ring, and the key is still
     * there. */
    uint64_t key = pq_wq_key_hash("K", 1), first;
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(pq_wq_ack(&q, d.id, d.deliveries), 0);
    CHECK_EQ(put(&q, 30, 0, key, &first), 0);
    pid = fork();
    if (pid == 0) {
        CHILD_CHECK(pthread_mutex_lock(&q.ctl->lock) == 0);
        atomic_store(&q.ctl->dedup.dirty, 1);
        memset((void *)q.dedup.index, 0, 2 * q.dedup.cap * sizeof(uint32_t));
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(put(&q, 31, 0, key, &id), 1); /* a duplicate still */
    CHECK_EQ(id, first);
    CHECK_EQ(atomic_load(&q.ctl->dedup.dirty), 0);
    return 0;
}

/* A key whose first put is still being written: the second put waits
 * (-EINPROGRESS) instead of being dropped, since the first may yet die. */
static int test_dedup_of_a_put_in_progress(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 16, 64, 60000 * MS, 0, 60000 * MS) != NULL);
    uint64_t key = pq_wq_key_hash("order-9", 7), id, id2, seen;
    uint8_t *p;
    CHECK_EQ(pq_wq_claim(&q, 8, 1, 0, key, 0, &id, &p, &seen), 0);
    CHECK_EQ(pq_wq_claim(&q, 8, 1, 0, key, 0, &id2, &p, &seen), -EINPROGRESS);
    pq_wq_commit(&q, id);
    CHECK_EQ(pq_wq_claim(&q, 8, 1, 0, key, 0, &id2, &p, &seen), 1);
    CHECK_EQ(id2, id);
    return 0;
}

/* Damaged slots and huge times: an error, or a saturated time, never a
 * read outside the segment or an overflow. */
static int test_bad_slots_and_huge_times(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 16, 0, 20 * MS, 1, 0) != NULL);
    uint64_t id, seen;
    pq_wq_delivery d;
    int64_t wake;
    CHECK_EQ(put(&q, 1, INT64_MAX, 0, &id), 0); /* delayed for ever, not at once */
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), -EAGAIN);
    CHECK_EQ(put(&q, 2, 0, 0, &id), 0);
    q.slots[id & 15].len = 4000; /* past the data area */
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), PQ_ERR_CORRUPT);
    uint32_t st;
    CHECK_EQ(pq_wq_copy_message(&q, id, NULL, 0, &d, &st), -ENOENT);
    q.slots[id & 15].len = 8;
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    /* Expired on its last delivery: dead, and not counted as redelivered. */
    pq_test_sleep_ms(25);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 1);
    pq_wq_stats s;
    CHECK_EQ(pq_wq_get_stats(&q, &s), 0);
    CHECK_EQ(s.counters[PQ_WQ_REDELIVERED], 0);
    CHECK_EQ(pq_wq_extend(&q, d.id, d.deliveries, INT64_MAX), -ESTALE); /* dead, not held */
    return 0;
}

/* Many held, then one more: found without walking them all again (the
 * hint), and still found after a nack or an extend below the hint. */
static int test_scan_hint(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 1u << 20, 4096, 0, 60000 * MS, 0, 0) != NULL);
    uint64_t id, seen;
    pq_wq_delivery d[3000];
    int64_t wake;
    for (int i = 0; i < 3000; i++) {
        CHECK_EQ(put(&q, (uint64_t)i, 0, 0, &id), 0);
        CHECK_EQ(pq_wq_acquire(&q, &d[i], &wake, &seen), 0);
        CHECK_EQ(value_of(&d[i]), (uint64_t)i);
    }
    CHECK(q.ctl->scan >= 3000);
    pq_wq_delivery x;
    CHECK_EQ(pq_wq_acquire(&q, &x, &wake, &seen), -EAGAIN);
    CHECK_EQ(pq_wq_nack(&q, d[10].id, d[10].deliveries, 0), 0);
    CHECK_EQ(pq_wq_acquire(&q, &x, &wake, &seen), 0);
    CHECK_EQ(value_of(&x), 10);
    CHECK_EQ(pq_wq_extend(&q, d[20].id, d[20].deliveries, 0), 0);
    CHECK_EQ(pq_wq_acquire(&q, &x, &wake, &seen), 0);
    CHECK_EQ(value_of(&x), 20);
    CHECK_EQ(x.reason, PQ_WQ_REASON_TIMEOUT);
    return 0;
}

static int test_open_validates(void)
{
    pq_wq q;
    void *base = make_wq(&q, 4096, 16, 16, 1000 * MS, 3, 0);
    CHECK(base != NULL);
    size_t size = pq_wq_segment_size(4096, 16, 16);
    pq_wq q2;
    CHECK_EQ(pq_wq_open(&q2, base, size - 1), PQ_ERR_TRUNCATED);
    pq_segment_header *h = base;
    h->params[PQ_WQ_PARAM_SLOTS] = 17;
    CHECK_EQ(pq_wq_open(&q2, base, size), PQ_ERR_CORRUPT);
    h->params[PQ_WQ_PARAM_SLOTS] = 16;
    CHECK_EQ(pq_wq_open(&q2, base, size), 0);
    CHECK_EQ(q2.max_deliveries, 3);
    CHECK_EQ(q2.ctl->user_len, 3);
    CHECK(memcmp(q2.ctl->user, "dlq", 3) == 0);
    /* Copying a message out leaves it as it was. */
    uint64_t mid, buf = 0;
    CHECK_EQ(put(&q2, 42, 0, 0, &mid), 0);
    pq_wq_delivery md;
    uint32_t st;
    CHECK_EQ(pq_wq_copy_message(&q2, mid, NULL, 0, &md, &st), 8);
    CHECK_EQ(pq_wq_copy_message(&q2, mid, &buf, 8, &md, &st), 8);
    CHECK_EQ(buf, 42);
    CHECK_EQ(st, PQ_WQ_AVAILABLE);
    CHECK_EQ(md.deliveries, 0);
    CHECK_EQ(pq_wq_copy_message(&q2, mid + 1, &buf, 8, &md, &st), -ENOENT);
    uint64_t bh, bt;
    pq_wq_bounds(&q2, &bh, &bt);
    CHECK_EQ(bh, 0);
    CHECK_EQ(bt, 1);
    CHECK_EQ(pq_wq_segment_size(4095, 16, 0), 0);
    CHECK_EQ(pq_wq_segment_size(4096, 3, 0), 0);
    /* A damaged cursor: the claim says so instead of writing anywhere. */
    atomic_store(&q.ctl->tail_pos, 8);
    uint64_t id;
    CHECK_EQ(put(&q, 1, 0, 0, &id), PQ_ERR_CORRUPT);
    return 0;
}

/* The dedup table holds exactly dedup_slots keys of the window: a new key
 * past that waits (-ENOSPC) for the oldest to expire instead of pushing
 * out a key whose repeat would then get through. */
static int test_dedup_table_full(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 16, 4, 60000 * MS, 0, 40 * MS) != NULL);
    uint64_t id, ids[4], seen = 0;
    uint8_t *p;
    for (int i = 0; i < 4; i++) {
        char k[2] = {(char)('a' + i), 0};
        CHECK_EQ(put(&q, i, 0, pq_wq_key_hash(k, 1), &ids[i]), 0);
    }
    int64_t t0 = pq_test_now_ns();
    CHECK_EQ(pq_wq_claim(&q, 8, 1, 0, pq_wq_key_hash("e", 1), 0, &id, &p, &seen), -ENOSPC);
    CHECK_EQ(seen, atomic_load(&q.ctl->writable_seq));
    CHECK_EQ(put(&q, 9, 0, 0, &id), 0); /* no key: no table */
    for (int i = 0; i < 4; i++) { /* the keys it holds are all still there */
        char k[2] = {(char)('a' + i), 0};
        CHECK_EQ(put(&q, 9, 0, pq_wq_key_hash(k, 1), &id), 1);
        CHECK_EQ(id, ids[i]);
    }
    pq_wq_stats st;
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.counters[PQ_WQ_DEDUP_FULL], 1);
    CHECK_EQ(st.dedup_used, 4);
    int64_t wake = 0;
    CHECK_EQ(pq_wq_dedup_room(&q.dedup, &wake), 0);
    CHECK(wake >= t0 && wake <= t0 + 40 * MS); /* when the oldest goes */
    while (pq_test_now_ns() <= wake)
        pq_test_sleep_ms(5);
    CHECK_EQ(put(&q, 5, 0, pq_wq_key_hash("e", 1), &id), 0);
    return 0;
}

/* The table against a model, with a clock of the test's own: random keys
 * added, given back and expired through a small table (backward-shift
 * deletion of the index, wrap of the ring), every key looked up each step. */
static int test_dedup_table_model(void)
{
    enum { CAP = 8, KEYS = 24, STEPS = 20000 };
    static uint8_t mem[CAP * sizeof(pq_wq_dedup) + 2 * CAP * sizeof(uint32_t)]
        __attribute__((aligned(64)));
    static pq_wq_dedup_ctl ctl;
    CHECK(pq_wq_dedup_bytes(CAP) >= sizeof mem);
    memset(mem, 0, sizeof mem);
    pq_wq_dedup_table t;
    const int64_t window = 100;
    pq_wq_dedup_attach(&t, &ctl, mem, CAP, window);
    int64_t expires[KEYS] = {0}; /* the model: key k live until expires[k] */
    uint64_t pos[KEYS], ids[KEYS];
    int64_t now = 1;
    uint32_t r = 12345;
    uint64_t next_id = 0;
    for (int step = 0; step < STEPS; step++) {
        r = r * 1103515245u + 12345u;
        now += (r >> 16) % 7;
        int k = (int)((r >> 8) % KEYS);
        uint64_t h = 0x1000 + (uint64_t)k * 0x10001; /* some share an index home */
        CHECK_EQ(pq_wq_dedup_expire(&t, now), 0);
        int live = 0;
        for (int i = 0; i < KEYS; i++)
            live += expires[i] > now;
        const pq_wq_dedup *e = pq_wq_dedup_find(&t, h, now);
        if (expires[k] > now) {
            CHECK(e != NULL);
            CHECK_EQ(e->id, ids[k]);
            if ((r >> 4) % 5 == 0) { /* its put never happened */
                pq_wq_dedup_give_back(&t, pos[k], ids[k], now);
                expires[k] = now;
            }
        } else {
            CHECK(e == NULL);
            int room = pq_wq_dedup_room(&t, NULL);
            CHECK(pq_wq_dedup_used(&t) <= CAP);
            if (room) {
                pos[k] = pq_wq_dedup_next(&t);
                ids[k] = next_id++;
                pq_wq_dedup_add(&t, h, ids[k], now);
                expires[k] = now + window;
            } else {
                CHECK(live >= 1); /* full only of keys in the ring */
            }
        }
        for (int i = 0; i < KEYS; i++) { /* every key: found iff live */
            const pq_wq_dedup *f = pq_wq_dedup_find(&t, 0x1000 + (uint64_t)i * 0x10001, now);
            CHECK_EQ(f != NULL, expires[i] > now);
        }
    }
    return 0;
}

/* A move to the dead-letter queue put off (it was full): the message stays
 * DEAD without a mover, is not handed out again before its retry time, and
 * then is, to be moved. */
static int test_dead_park(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 16, 0, 60000 * MS, 0, 0) != NULL);
    uint64_t id, seen;
    pq_wq_delivery d;
    int64_t wake;
    CHECK_EQ(put(&q, 1, 0, 0, &id), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0);
    CHECK_EQ(pq_wq_reject(&q, d.id, d.deliveries), 0);
    CHECK_EQ(pq_wq_dead_park(&q, d.id, 40 * MS), 0);
    CHECK_EQ(pq_wq_dead_park(&q, d.id, 40 * MS), -ESTALE); /* not its mover any more */
    int64_t t0 = pq_test_now_ns();
    CHECK_EQ(put(&q, 2, 0, 0, &id), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 0); /* the next message, not the parked one */
    CHECK_EQ(value_of(&d), 2);
    CHECK_EQ(pq_wq_ack(&q, d.id, d.deliveries), 0);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), -EAGAIN);
    CHECK(wake > t0 - 1 && wake <= t0 + 40 * MS); /* its retry time */
    pq_wq_stats st;
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.dead, 1);
    CHECK_EQ(st.counters[PQ_WQ_DEAD_PARKED], 1);
    while (pq_test_now_ns() <= wake)
        pq_test_sleep_ms(5);
    CHECK_EQ(pq_wq_acquire(&q, &d, &wake, &seen), 1);
    CHECK_EQ(value_of(&d), 1);
    CHECK_EQ(d.reason, PQ_WQ_REASON_REJECTED);
    CHECK_EQ(pq_wq_dead_done(&q, d.id), 0);
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.dead, 0);
    CHECK_EQ(st.counters[PQ_WQ_DEAD_LETTERED], 1);
    return 0;
}

/* The bounds of a damaged queue are an error, not a scan of 2^64; a
 * smaller largest message than a quarter, kept in the segment. */
static int test_bounds_and_max_payload(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 16, 0, 1000 * MS, 0, 0) != NULL);
    uint64_t h, t;
    CHECK_EQ(pq_wq_bounds(&q, &h, &t), 0);
    atomic_store(&q.ctl->tail, 17);
    CHECK_EQ(pq_wq_bounds(&q, &h, &t), PQ_ERR_CORRUPT);
    atomic_store(&q.ctl->head, 18);
    CHECK_EQ(pq_wq_bounds(&q, &h, &t), PQ_ERR_CORRUPT);
    size_t size = pq_wq_segment_size(4096, 16, 0);
    void *base = pq_test_shared(size);
    CHECK(base != NULL);
    CHECK_EQ(pq_wq_create(base, size, 4096, 16, 0, MS, 0, 0, 1025, 0, NULL, 0), -EINVAL);
    CHECK_EQ(pq_wq_create(base, size, 4096, 16, 0, MS, 0, 0, 100, 0, NULL, 0), 0);
    pq_wq q2;
    CHECK_EQ(pq_wq_open(&q2, base, size), 0);
    CHECK_EQ(q2.max_payload, 100);
    uint64_t id, seen;
    uint8_t *p;
    CHECK_EQ(pq_wq_claim(&q2, 101, 1, 0, 0, 0, &id, &p, &seen), -EMSGSIZE);
    CHECK_EQ(pq_wq_claim(&q2, 100, 1, 0, 0, 0, &id, &p, &seen), 0);
    ((pq_segment_header *)base)->params[PQ_WQ_PARAM_MAX_PAYLOAD] = 1025;
    CHECK_EQ(pq_wq_open(&q2, base, size), PQ_ERR_CORRUPT);
    return 0;
}

/* Batches (pq_wq_claim_many, pq_wq_acquire_many, pq_wq_ack_many,
 * pq_wq_nack_many): each message as its one-at-a-time verb would treat it. */
static int test_batches(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 16, 64, 60000 * MS, 2, 60000 * MS) != NULL);
    pq_wq_put p[20];
    uint64_t v[20];
    uint32_t done;
    uint64_t seen;
    for (int i = 0; i < 20; i++) {
        v[i] = 500 + (uint64_t)i;
        p[i] = (pq_wq_put){.len = 8, .type = 3, .key_hash = 0};
    }
    p[2].key_hash = pq_wq_key_hash("a", 1);
    p[3].key_hash = pq_wq_key_hash("a", 1); /* a duplicate of p[2], in the same batch */
    p[4].len = (uint32_t)q.max_payload + 1;
    CHECK_EQ(pq_wq_claim_many(&q, p, 5, 0, 77, &done, &seen), -EMSGSIZE);
    CHECK_EQ(done, 0);
    p[4].len = 8;
    CHECK_EQ(pq_wq_claim_many(&q, p, 5, -1, 77, &done, &seen), -EINVAL);
    /* The key of p[3] is p[2]'s, still being written: the batch stops
     * there, to go on once p[0..3) are committed. */
    CHECK_EQ(pq_wq_claim_many(&q, p, 20, 0, 77, &done, &seen), -EINPROGRESS);
    CHECK_EQ(done, 3);
    for (uint32_t i = 0; i < done; i++)
        memcpy(p[i].payload, &v[i], 8);
    pq_wq_delivery d[16];
    uint32_t got;
    int64_t wake;
    /* Nothing is delivered before its commit. */
    CHECK_EQ(pq_wq_acquire_many(&q, d, 16, &got, &wake, &seen), -EAGAIN);
    CHECK_EQ(got, 0);
    pq_wq_commit_many(&q, p, done);
    /* 16 slots: 14 more claimed after p[3] (a duplicate), then no room. */
    CHECK_EQ(pq_wq_claim_many(&q, p + 3, 17, 0, 77, &done, &seen), -EAGAIN);
    CHECK_EQ(done, 14);
    CHECK(p[3].payload == NULL);
    CHECK_EQ(p[3].id, p[2].id);
    for (uint32_t i = 3; i < 3 + done; i++)
        if (p[i].payload != NULL)
            memcpy(p[i].payload, &v[i], 8);
    pq_wq_commit_many(&q, p + 3, done);
    CHECK_EQ(pq_wq_acquire_many(&q, d, 0, &got, &wake, &seen), -EINVAL);
    CHECK_EQ(pq_wq_acquire_many(&q, d, 5, &got, &wake, &seen), 0);
    CHECK_EQ(got, 5);
    uint64_t ids[16];
    uint32_t dels[16];
    int32_t res[16];
    for (uint32_t i = 0; i < got; i++) {
        CHECK_EQ(d[i].id, (uint64_t)i);
        CHECK_EQ(d[i].dead, 0);
        CHECK_EQ(d[i].deliveries, 1);
        CHECK_EQ(d[i].type, 3);
        CHECK_EQ(d[i].enqueued_ms, 77);
        ids[i] = d[i].id;
        dels[i] = d[i].deliveries;
    }
    CHECK_EQ(value_of(&d[3]), 504); /* id 3 is p[4]: p[3] was a duplicate */
    CHECK_EQ(pq_wq_acquire_many(&q, d + 5, 16, &got, &wake, &seen), 0);
    CHECK_EQ(got, 11);
    CHECK_EQ(d[15].id, 15);
    CHECK_EQ(pq_wq_acquire_many(&q, d, 16, &got, &wake, &seen), -EAGAIN);
    /* ack two of the first five, one of them twice in the batch, and one
     * with a wrong delivery count: each answered alone. */
    uint64_t aid[4] = {0, 1, 1, 2};
    uint32_t adel[4] = {1, 1, 1, 9};
    CHECK_EQ(pq_wq_ack_many(&q, aid, adel, 4, res), 0);
    CHECK_EQ(res[0], 0);
    CHECK_EQ(res[1], 0);
    CHECK_EQ(res[2], -ESTALE);
    CHECK_EQ(res[3], -ESTALE);
    pq_wq_stats st;
    CHECK_EQ(pq_wq_get_stats(&q, &st), 0);
    CHECK_EQ(st.counters[PQ_WQ_ACKED], 2);
    CHECK_EQ(st.in_flight, 14);
    /* Room came back: the head passed 0 and 1. */
    CHECK_EQ(pq_wq_claim_many(&q, p + 17, 3, 0, 77, &done, &seen), -EAGAIN);
    CHECK_EQ(done, 2);
    memcpy(p[17].payload, &v[17], 8);
    memcpy(p[18].payload, &v[18], 8);
    pq_wq_commit_many(&q, p + 17, 2);
    /* nack 2..4 (delivery 1 of 2): available again, count raised next time. */
    CHECK_EQ(pq_wq_nack_many(&q, ids + 2, dels + 2, 3, -1, res), -EINVAL);
    CHECK_EQ(pq_wq_nack_many(&q, ids + 2, dels + 2, 3, 0, res), 0);
    CHECK(res[0] == 0 && res[1] == 0 && res[2] == 0);
    CHECK_EQ(pq_wq_acquire_many(&q, d, 16, &got, &wake, &seen), 0);
    CHECK_EQ(got, 5); /* 2, 3, 4 again, then the two new ones */
    CHECK_EQ(d[0].id, 2);
    CHECK_EQ(d[0].deliveries, 2);
    CHECK_EQ(d[0].reason, PQ_WQ_REASON_NACK);
    CHECK_EQ(d[3].id, 16);
    CHECK_EQ(value_of(&d[3]), 517);
    /* The last delivery (max 2): a nack makes them DEAD, this process's. */
    for (int i = 0; i < 3; i++) {
        ids[i] = d[i].id;
        dels[i] = d[i].deliveries;
    }
    CHECK_EQ(pq_wq_nack_many(&q, ids, dels, 3, 0, res), 0);
    CHECK(res[0] == 1 && res[1] == 1 && res[2] == 1);
    CHECK_EQ(pq_wq_dead_done(&q, ids[0]), 0);
    /* A mover that parks one: an acquire_many hands it out marked dead,
     * among live ones. */
    CHECK_EQ(pq_wq_dead_park(&q, ids[1], 0), 0);
    CHECK_EQ(pq_wq_nack_many(&q, &d[3].id, &d[3].deliveries, 1, 0, res), 0);
    CHECK_EQ(res[0], 0);
    CHECK_EQ(pq_wq_acquire_many(&q, d, 16, &got, &wake, &seen), 0);
    CHECK_EQ(got, 2);
    CHECK_EQ(d[0].id, ids[1]);
    CHECK_EQ(d[0].dead, 1);
    CHECK_EQ(d[1].id, 16);
    CHECK_EQ(d[1].dead, 0);
    CHECK_EQ(d[1].deliveries, 2);
    /* single ack and nack still answer as before */
    CHECK_EQ(pq_wq_ack(&q, 16, 2), 0);
    CHECK_EQ(pq_wq_ack(&q, 16, 2), -ESTALE);
    CHECK_EQ(pq_wq_nack(&q, 16, 2, 0), -ESTALE);
    return 0;
}

/* A consumer that dies holding a batch: every message of it comes back
 * (pq_wq_reap), each with its delivery count raised at the next take. */
static int test_batch_holder_dies(void)
{
    pq_wq q;
    CHECK(make_wq(&q, 4096, 16, 0, 60000 * MS, 0, 0) != NULL);
    uint64_t id, seen;
    for (int i = 0; i < 10; i++)
        CHECK_EQ(put(&q, (uint64_t)i, 0, 0, &id), 0);
    pid_t pid = fork();
    if (pid == 0) {
        pq_wq_delivery cd[8];
        uint32_t g;
        int64_t w;
        uint64_t s;
        CHILD_CHECK(pq_wq_acquire_many(&q, cd, 8, &g, &w, &s) == 0 && g == 8);
        _exit(0); /* dies holding them */
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    pq_wq_delivery d[16];
    uint32_t got;
    int64_t wake;
    CHECK_EQ(pq_wq_acquire_many(&q, d, 16, &got, &wake, &seen), 0);
    CHECK_EQ(got, 2); /* the two it did not take */
    CHECK_EQ(d[0].id, 8);
    CHECK_EQ(pq_wq_reap(&q), 8);
    CHECK_EQ(pq_wq_acquire_many(&q, d, 16, &got, &wake, &seen), 0);
    CHECK_EQ(got, 8);
    for (uint32_t i = 0; i < got; i++) {
        CHECK_EQ(d[i].id, (uint64_t)i);
        CHECK_EQ(d[i].deliveries, 2);
        CHECK_EQ(d[i].reason, PQ_WQ_REASON_DIED);
        CHECK_EQ(value_of(&d[i]), (uint64_t)i);
    }
    return 0;
}

int main(void)
{
    printf("test_wq\n");
    RUN(test_deliver_ack_and_room);
    RUN(test_nack_delay_and_timeout);
    RUN(test_delivery_limit_and_dead_letters);
    RUN(test_dedup);
    RUN(test_dead_holders);
    RUN(test_wait_readable_and_writable);
    RUN(test_producers_and_consumers);
    RUN(test_deaths_inside_the_lock);
    RUN(test_dedup_of_a_put_in_progress);
    RUN(test_bad_slots_and_huge_times);
    RUN(test_scan_hint);
    RUN(test_open_validates);
    RUN(test_dedup_table_full);
    RUN(test_dedup_table_model);
    RUN(test_dead_park);
    RUN(test_bounds_and_max_payload);
    RUN(test_batches);
    RUN(test_batch_holder_dies);
    return pq_test_result();
}
