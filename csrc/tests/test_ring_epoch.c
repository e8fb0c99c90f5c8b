/*
 * test_ring_epoch.c - epochs of the ring (pq_ring_epoch.c): a claim that
 * finds the ring full starts a new epoch one level up instead of failing,
 * until the last level (-EAGAIN); records come out in order across
 * epochs; pq_ring_trim starts over at level 0 once the queue is empty and
 * empties the regions of dead epochs (their pages are gone: mincore),
 * never a live one; a grown level is backed lazily like level 0; a
 * damaged epoch table is PQ_ERR_CORRUPT; producers in two processes grow
 * one ring at once.
 */
#include "pq_test.h"

#include "../pq_ring.h"

#define CAP 4096u
#define LEVELS 4u
#define SIZE (PQ_RING_DATA_OFFSET + CAP * ((1u << LEVELS) - 1))
#define LEN 100u /* a 128-byte record: 32 per 4 KiB */

static uint64_t epoch_of(const pq_ring *r)
{
    return atomic_load_explicit(&r->ctl->epoch, memory_order_acquire);
}

static unsigned level_of(const pq_ring *r, uint64_t n)
{
    return (unsigned)atomic_load_explicit(&r->ctl->epochs[n % PQ_RING_EPOCHS].level,
                                          memory_order_acquire);
}

/* Resident pages of level l's region. */
static size_t resident(const pq_ring *r, unsigned level)
{
    return pq_test_resident(r->data + pq_ring_level_offset(r->capacity, level),
                            (size_t)(r->capacity << level));
}

/* Put one LEN-byte record holding v (backing the region when asked). */
static int put(pq_ring *r, uint32_t v)
{
    uint32_t len = LEN;
    uint64_t pos;
    for (;;) {
        int rc = pq_ring_claim(r, &len, 1, &pos);
        if (rc == -ENOBUFS) {
            rc = pq_ring_reserve(r, r->reserve_need);
            if (rc < 0)
                return rc;
            continue;
        }
        if (rc < 0)
            return rc;
        memset(pq_ring_payload(r, pos), 0, LEN);
        memcpy(pq_ring_payload(r, pos), &v, sizeof v);
        pq_ring_commit(r, pos, 1);
        return 0;
    }
}

/* Get up to max records; their values appended to out. -EAGAIN when none. */
static int get(pq_ring *r, uint32_t *out, int max)
{
    pq_ring_record recs[64];
    pq_ring_batch b;
    for (;;) {
        int n = pq_ring_peek(r, recs, max < 64 ? (uint32_t)max : 64, &b);
        if (n == -ESTALE || n == 0) {
            if (n == 0)
                pq_ring_consume(r, &b);
            continue;
        }
        if (n < 0)
            return n;
        for (int i = 0; i < n; i++)
            memcpy(&out[i], recs[i].payload, sizeof *out);
        if (pq_ring_consume(r, &b) != 0)
            continue;
        return n;
    }
}

/* A fresh ring of LEVELS levels in shared memory, with a producer's and
 * a consumer's view open on it: its base, NULL on failure. */
static uint8_t *open_pair(pq_ring *p, pq_ring *c)
{
    uint8_t *base = pq_test_shared(SIZE);
    if (base == NULL || pq_ring_create(base, SIZE, CAP, 0, NULL, 0) != 0 ||
        pq_ring_open(p, base, SIZE) != 0 || pq_ring_open(c, base, SIZE) != 0)
        return NULL;
    return base;
}

static int test_grows_instead_of_full(void)
{
    pq_ring p, c;
    uint8_t *base = open_pair(&p, &c);
    const uint32_t total = (CAP / 128) * ((1u << LEVELS) - 1); /* every level full */
    static uint32_t got[4096];
    uint32_t n = 0;
    CHECK(base != NULL);
    CHECK_EQ(p.nlevels, LEVELS);
    CHECK_EQ(p.span, (uint64_t)CAP * 15);
    for (uint32_t i = 0; i < total; i++)
        CHECK_EQ(put(&p, i), 0);
    CHECK_EQ(epoch_of(&p), 3u); /* levels 0, 1, 2, 3 */
    CHECK_EQ(level_of(&p, 3), 3u);
    CHECK_EQ(put(&p, 99999), -EAGAIN); /* the last level is full */
    CHECK_EQ(p.ep_level, 3u);
    while (n < total) {
        int k = get(&c, got + n, 4096);
        CHECK(k > 0);
        n += (uint32_t)k;
    }
    for (uint32_t i = 0; i < total; i++)
        CHECK_EQ(got[i], i);
    CHECK_EQ(get(&c, got, 1), -EAGAIN);
    munmap(base, SIZE);
    return 0;
}

static int test_trim(void)
{
    pq_ring p, c;
    uint8_t *base = open_pair(&p, &c);
    uint32_t got[256], v = 0, next = 0;
    CHECK(base != NULL);
    /* Fill levels 0, 1 and part of 2. */
    while (epoch_of(&p) < 2 || p.ep_level != 2)
        CHECK_EQ(put(&p, v++), 0);
    for (int i = 0; i < 10; i++)
        CHECK_EQ(put(&p, v++), 0);
    CHECK(resident(&p, 1) == 2 && resident(&p, 2) > 0);
    /* Nothing dead yet: a trim empties nothing. */
    CHECK_EQ(pq_ring_trim(&c), 0);
    CHECK(resident(&p, 1) == 2);
    /* Read through levels 0 and 1 into 2: level 1 is dead, the reader
     * asks for a trim, and the trim empties level 1 only. */
    while (next < 32 + 64 + 1) {
        int k = get(&c, got, 1);
        CHECK_EQ(k, 1);
        CHECK_EQ(got[0], next);
        next++;
    }
    CHECK_EQ(c.trim_wanted, 1);
    CHECK_EQ(pq_ring_trim(&c), 1);
    CHECK_EQ(resident(&p, 1), 0u);
    CHECK(resident(&p, 2) > 0);
    CHECK_EQ(epoch_of(&p), 2u); /* not empty: no new epoch */
    /* Drain: empty in a grown epoch, so the trim goes back to level 0. */
    while (next < v) {
        int k = get(&c, got, 256);
        CHECK(k > 0);
        for (int i = 0; i < k; i++)
            CHECK_EQ(got[i], next++);
    }
    CHECK_EQ(c.trim_wanted, 1);
    CHECK_EQ(pq_ring_trim(&c), 1);
    CHECK_EQ(epoch_of(&p), 3u);
    CHECK_EQ(level_of(&p, 3), 0u);
    CHECK_EQ(resident(&p, 2), 0u);
    CHECK(resident(&p, 0) > 0); /* level 0 keeps its pages */
    CHECK_EQ(atomic_load_explicit(&p.ctl->dirty_levels, memory_order_relaxed), 0u);
    CHECK_EQ(pq_ring_trim(&c), 0); /* nothing left to do */
    /* And it grows again from level 0, in order. */
    for (int i = 0; i < 100; i++)
        CHECK_EQ(put(&p, v++), 0);
    CHECK_EQ(level_of(&p, epoch_of(&p)), 2u);
    while (next < v) {
        int k = get(&c, got, 256);
        CHECK(k > 0);
        for (int i = 0; i < k; i++)
            CHECK_EQ(got[i], next++);
    }
    munmap(base, SIZE);
    return 0;
}

/* A grown level is backed lazily too: its first claim asks (-ENOBUFS). */
static int test_grown_level_backed_lazily(void)
{
    uint8_t *base = pq_test_shared(SIZE);
    pq_ring p;
    uint32_t len = LEN;
    uint64_t pos;
    CHECK(base != NULL);
    CHECK_EQ(pq_ring_create_backed(base, SIZE, CAP, 0, NULL, 0, CAP), 0);
    CHECK_EQ(pq_ring_open(&p, base, SIZE), 0);
    for (uint32_t i = 0; i < CAP / 128; i++)
        CHECK_EQ(put(&p, i), 0);
    CHECK_EQ(pq_ring_claim(&p, &len, 1, &pos), -ENOBUFS); /* grew into level 1 */
    CHECK_EQ(p.ep_level, 1u);
    CHECK_EQ(resident(&p, 1), 0u);
    CHECK_EQ(pq_ring_reserve(&p, p.reserve_need), 0);
    CHECK_EQ(resident(&p, 1), 2u); /* the whole 8 KiB region (less than a chunk) */
    CHECK_EQ(pq_ring_claim(&p, &len, 1, &pos), 0);
    pq_ring_commit(&p, pos, 1);
    munmap(base, SIZE);
    return 0;
}

/* A damaged table: views that must look it up say PQ_ERR_CORRUPT. */
static int test_damaged_table(void)
{
    uint8_t *base = pq_test_shared(SIZE);
    pq_ring p, c;
    uint32_t got[1];
    CHECK(base != NULL);
    for (int damage = 0; damage < 3; damage++) {
        CHECK_EQ(pq_ring_create(base, SIZE, CAP, 0, NULL, 0), 0);
        CHECK_EQ(pq_ring_open(&p, base, SIZE), 0);
        for (uint32_t i = 0; i < 40; i++) /* epochs 0 and 1 */
            CHECK_EQ(put(&p, i), 0);
        pq_ring_epoch *e = &p.ctl->epochs[1];
        if (damage == 0)
            atomic_store(&e->level, 99);
        else if (damage == 1)
            atomic_store(&e->start, atomic_load(&e->start) + 8);
        else
            atomic_store(&p.ctl->epochs[0].start, atomic_load(&e->start) + 16);
        CHECK_EQ(pq_ring_open(&p, base, SIZE), 0);
        CHECK_EQ(pq_ring_open(&c, base, SIZE), 0);
        if (damage != 2)
            CHECK_EQ(put(&p, 1), PQ_ERR_CORRUPT);
        CHECK_EQ(get(&c, got, 1), PQ_ERR_CORRUPT);
        CHECK_EQ(pq_ring_trim(&c), PQ_ERR_CORRUPT);
    }
    munmap(base, SIZE);
    return 0;
}

/* Two producer processes grow the ring while this one reads: each one's
 * messages in order, none lost, none twice. */
static int test_two_processes_grow_it(void)
{
    const uint64_t size = PQ_RING_DATA_OFFSET + (uint64_t)CAP * ((1u << 8) - 1);
    uint8_t *base = pq_test_shared(size);
    const uint32_t per = 20000;
    pid_t pids[2];
    pq_ring c;
    uint32_t next[2] = {0, 0}, got[64];
    CHECK(base != NULL);
    CHECK_EQ(pq_ring_create(base, size, CAP, 0, NULL, 0), 0);
    for (uint32_t k = 0; k < 2; k++) {
        pids[k] = fork();
        CHECK(pids[k] >= 0);
        if (pids[k] == 0) {
            pq_ring r;
            /* Bounded: a reader that gave up (a failed check) must not
             * leave this child spinning on a full ring for ever. */
            int64_t until = pq_test_now_ns() + 120 * (int64_t)1000000000;
            CHILD_CHECK(pq_ring_open(&r, base, size) == 0);
            for (uint32_t i = 0; i < per;) {
                int rc = put(&r, k << 31 | i);
                if (rc == -EAGAIN) { /* the last level full: wait for the reader */
                    CHILD_CHECK(pq_test_now_ns() < until);
                    sched_yield();
                    continue;
                }
                if (rc != 0) {
                    fprintf(stderr, "producer %u: put %u returned %d\n", k, i, rc);
                    _exit(1);
                }
                i++;
            }
            _exit(0);
        }
    }
    CHECK_EQ(pq_ring_open(&c, base, size), 0);
    int64_t deadline = pq_test_now_ns() + 60 * (int64_t)1000000000;
    while (next[0] + next[1] < 2 * per && pq_test_now_ns() < deadline) {
        int n = get(&c, got, 64);
        if (n == -EAGAIN || n == -EINPROGRESS) {
            sched_yield();
            continue;
        }
        if (n <= 0)
            fprintf(stderr, "reader: get returned %d after %u + %u\n", n, next[0], next[1]);
        CHECK(n > 0);
        for (int i = 0; i < n; i++) {
            uint32_t who = got[i] >> 31, seq = got[i] & 0x7fffffffu;
            CHECK_EQ(seq, next[who]);
            next[who]++;
        }
        if (c.trim_wanted) {
            c.trim_wanted = 0;
            CHECK(pq_ring_trim(&c) >= 0);
        }
    }
    for (int k = 0; k < 2; k++)
        CHECK_EQ(pq_test_wait_child(pids[k], 60000), 0);
    CHECK_EQ(next[0], per);
    CHECK_EQ(next[1], per);
    munmap(base, size);
    return 0;
}

/* Pages a producer left in a dead level (it populated the region while a
 * trim emptied it, and its own trim found the lock busy): the next take
 * that empties the queue - in level 0 - asks for a trim, which gives them
 * back. Before, nothing asked once the ring was back at level 0. */
static int test_pages_left_in_a_dead_level_are_given_back(void)
{
    pq_ring p, c;
    uint8_t *base = open_pair(&p, &c);
    uint32_t got[256], v = 0, next = 0;
    CHECK(base != NULL);
    while (p.ep_level != 1)
        CHECK_EQ(put(&p, v++), 0);
    while (next < v) { /* drain: back to level 0 */
        int k = get(&c, got, 256);
        CHECK(k > 0);
        next += (uint32_t)k;
    }
    CHECK_EQ(c.trim_wanted, 1);
    c.trim_wanted = 0;
    CHECK_EQ(pq_ring_trim(&c), 1);
    CHECK_EQ(level_of(&p, epoch_of(&p)), 0u);
    CHECK_EQ(resident(&p, 1), 0u);
    /* The reader moves into the level-0 epoch (its first read there asks
     * for a trim of what it left: done). */
    CHECK_EQ(put(&p, v++), 0);
    CHECK_EQ(get(&c, got, 256), 1);
    if (c.trim_wanted) {
        c.trim_wanted = 0;
        CHECK_EQ(pq_ring_trim(&c), 0);
    }
    CHECK_EQ(c.rd_level, 0u);
    /* The late producer: a page of level 1 written, the level marked. */
    uint8_t *lvl1 = p.data + pq_ring_level_offset(p.capacity, 1);
    memset(lvl1, 0xab, 16);
    atomic_fetch_or_explicit(&p.ctl->dirty_levels, 1ull << 1, memory_order_relaxed);
    CHECK_EQ(resident(&p, 1), 1u);
    CHECK_EQ(put(&p, v++), 0);
    CHECK_EQ(get(&c, got, 256), 1);
    CHECK_EQ(c.trim_wanted, 1); /* emptied, in level 0, a level marked */
    CHECK_EQ(pq_ring_trim(&c), 1);
    CHECK_EQ(resident(&p, 1), 0u);
    CHECK_EQ(atomic_load_explicit(&p.ctl->dirty_levels, memory_order_relaxed), 0u);
    munmap(base, SIZE);
    return 0;
}

/* A consumer with a stale head reads records of levels that a trim has
 * emptied meanwhile (another consumer drained the queue): reading a hole
 * gives the region a page (tmpfs has no shared zero page). When its CAS
 * fails (abandon 0), or when it gives the peek up because its copy out
 * failed (abandon 1: pq_ring_peek_abandon), it marks every level its
 * batch read (here 1 and 2), so that the trim asked for by the next take
 * that empties the queue gives the pages back. A peek given up while head
 * stays marks nothing (checked first when abandon is 1). */
static int check_a_stale_read_is_given_back(int abandon)
{
    pq_ring p, c1, c2;
    uint8_t *base = open_pair(&p, &c1);
    pq_ring_record recs[2];
    pq_ring_batch b;
    uint32_t got[256], v = 0, first2 = 0;
    CHECK(base != NULL);
    CHECK_EQ(pq_ring_open(&c2, base, SIZE), 0);
    while (p.ep_level != 2) {
        first2 = v;
        CHECK_EQ(put(&p, v++), 0);
    }
    for (int i = 0; i < 4; i++)
        CHECK_EQ(put(&p, v++), 0);
    /* c2 reads up to level 1's last record; c1 then peeks a batch of it
     * and level 2's first. */
    for (uint32_t i = 0; i + 1 < first2; i++)
        CHECK_EQ(get(&c2, got, 1), 1);
    if (abandon) {
        /* Given up while head stays: nothing read can be stale, nothing
         * is marked (the producer's own marks of its levels set aside
         * meanwhile: the trim below needs them). */
        CHECK_EQ(pq_ring_peek(&c1, recs, 2, &b), 2);
        uint64_t marks = atomic_exchange_explicit(&p.ctl->dirty_levels, 0, memory_order_relaxed);
        pq_ring_peek_abandon(&c1, &b);
        CHECK_EQ(atomic_load_explicit(&p.ctl->dirty_levels, memory_order_relaxed), 0u);
        atomic_store_explicit(&p.ctl->dirty_levels, marks, memory_order_relaxed);
    }
    CHECK_EQ(pq_ring_peek(&c1, recs, 2, &b), 2);
    CHECK_EQ(c1.rd_level, 2u);
    /* c2 drains, and its trim empties levels 1 and 2 (back to level 0). */
    while (pq_ring_depth(&c2) > 0)
        CHECK(get(&c2, got, 256) > 0);
    CHECK_EQ(c2.trim_wanted, 1);
    c2.trim_wanted = 0;
    CHECK_EQ(pq_ring_trim(&c2), 2);
    CHECK_EQ(resident(&p, 1), 0u);
    CHECK_EQ(resident(&p, 2), 0u);
    /* c1 copies its records out now: the holes get a page each. */
    volatile const uint8_t *p1 = recs[0].payload, *p2 = recs[1].payload;
    CHECK_EQ(p1[0], 0);
    CHECK_EQ(p2[0], 0);
    CHECK_EQ(resident(&p, 1), 1u);
    CHECK_EQ(resident(&p, 2), 1u);
    if (abandon)
        pq_ring_peek_abandon(&c1, &b);
    else
        CHECK_EQ(pq_ring_consume(&c1, &b), -EAGAIN); /* head moved on */
    CHECK_EQ(atomic_load_explicit(&p.ctl->dirty_levels, memory_order_relaxed) & 6u, 6u);
    /* c1's next read is current (empty); the next take that empties the
     * queue asks for a trim: the pages go. */
    CHECK_EQ(pq_ring_peek(&c1, recs, 2, &b), -EAGAIN);
    CHECK_EQ(put(&p, v++), 0);
    CHECK_EQ(get(&c2, got, 256), 1);
    CHECK_EQ(c2.trim_wanted, 1);
    CHECK_EQ(pq_ring_trim(&c2), 2);
    CHECK_EQ(resident(&p, 1), 0u);
    CHECK_EQ(resident(&p, 2), 0u);
    munmap(base, SIZE);
    return 0;
}

static int test_a_stale_read_of_a_dead_level_is_given_back(void)
{
    return check_a_stale_read_is_given_back(0);
}

static int test_an_abandoned_stale_peek_is_given_back(void)
{
    return check_a_stale_read_is_given_back(1);
}

int main(void)
{
    CHECK_EQ(pq_ring_populate_supported(), 1); /* Linux >= 5.14 */
    RUN(test_grows_instead_of_full);
    RUN(test_trim);
    RUN(test_grown_level_backed_lazily);
    RUN(test_damaged_table);
    RUN(test_two_processes_grow_it);
    RUN(test_pages_left_in_a_dead_level_are_given_back);
    RUN(test_a_stale_read_of_a_dead_level_is_given_back);
    RUN(test_an_abandoned_stale_peek_is_given_back);
    return pq_test_failed;
}
