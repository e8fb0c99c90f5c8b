/* test_log.c - the partitioned ring log of pyqueue.Log (pq_log.h). */
#include "pq_test.h"

#include "../pq_log.h"
#include "../pq_record.h"

static void *make_log_retained(uint32_t parts, uint64_t cap, uint64_t retention_ms, pq_log *l)
{
    size_t size = pq_log_segment_size(parts, cap);
    void *base = size ? pq_test_shared(size) : NULL;
    if (base == NULL || pq_log_create(base, size, parts, cap, retention_ms, 0) != 0 ||
        pq_log_open(l, base, size) != 0)
        return NULL;
    return base;
}

static void *make_log(uint32_t parts, uint64_t cap, pq_log *l)
{
    return make_log_retained(parts, cap, 0, l);
}

static int append_u64(pq_log *l, uint32_t part, uint64_t v, uint32_t pad, uint64_t *off)
{
    uint8_t buf[256] = {0};
    memcpy(buf, &v, sizeof v);
    pq_log_entry e = {.key = "k", .key_len = 1, .headers = "hh", .headers_len = 2,
                      .value = buf, .value_len = 8 + pad, .type = 1};
    return pq_log_append(l, part, &e, 1, 1234, off);
}

/* Read up to max values from offset (waiting up to timeout_ms for one). */
static int read_u64(pq_log *l, uint32_t part, uint64_t offset, uint64_t *vals, uint64_t *offs,
                    uint32_t max, int timeout_ms)
{
    pq_log_record r[64];
    pq_log_batch b;
    int64_t deadline = pq_test_now_ns() + (int64_t)timeout_ms * 1000000;
    if (max > 64)
        max = 64;
    for (;;) {
        int rc = pq_log_peek(l, part, offset, r, max, &b);
        if (rc >= 0) {
            int bad = 0;
            for (int i = 0; i < rc; i++) {
                memcpy(&vals[i], r[i].value, 8);
                offs[i] = r[i].offset;
                if (r[i].key_len != 1 || r[i].headers_len != 2 || r[i].timestamp_ms != 1234 ||
                    memcmp(r[i].key, "k", 1) != 0 || memcmp(r[i].headers, "hh", 2) != 0)
                    bad = 1;
            }
            /* Only a validated copy counts (it may be torn before). */
            if (pq_log_validate(l, part, &b) != 0)
                continue;
            if (bad)
                return -EBADMSG;
            if (rc == 0) {
                offset = b.next_offset;
                continue;
            }
            return rc;
        }
        if (rc != -EAGAIN && rc != -EINPROGRESS)
            return rc;
        if (pq_test_now_ns() >= deadline)
            return -ETIMEDOUT;
        pq_log_wait(l, part, offset, deadline, 1000);
    }
}

static int test_basic(void)
{
    pq_log l;
    void *base = make_log(3, 4096, &l);
    CHECK(base != NULL);
    CHECK_EQ(l.partitions, 3);
    uint64_t off, s, e, v[64], o[64];
    for (uint64_t i = 0; i < 10; i++) {
        CHECK_EQ(append_u64(&l, 1, 100 + i, 0, &off), 0);
        CHECK_EQ(off, i);
    }
    CHECK_EQ(append_u64(&l, 2, 7, 0, &off), 0);
    CHECK_EQ(off, 0);
    CHECK_EQ(pq_log_bounds(&l, 1, &s, &e), 0);
    CHECK_EQ(s, 0);
    CHECK_EQ(e, 10);
    CHECK_EQ(read_u64(&l, 1, 3, v, o, 64, 0), 7);
    for (int i = 0; i < 7; i++) {
        CHECK_EQ(v[i], 103 + i);
        CHECK_EQ(o[i], 3 + i);
    }
    CHECK_EQ(read_u64(&l, 0, 0, v, o, 64, 0), -ETIMEDOUT);
    CHECK_EQ(read_u64(&l, 1, 11, v, o, 64, 0), PQ_ERR_OFFSET_RANGE);
    CHECK_EQ(append_u64(&l, 3, 0, 0, &off), -EINVAL);
    CHECK_EQ(append_u64(&l, 0, 0, 0, &off), 0);
    /* A record over a quarter of the ring. */
    static uint8_t big[2048];
    pq_log_entry be = {.value = big, .value_len = sizeof big};
    CHECK_EQ(pq_log_append(&l, 0, &be, 1, 0, &off), -EMSGSIZE);
    /* Wrong kind / truncated. */
    pq_log l2;
    CHECK_EQ(pq_log_open(&l2, base, 4096), PQ_ERR_TRUNCATED);
    munmap(base, pq_log_segment_size(3, 4096));
    return 0;
}

static int test_retention(void)
{
    pq_log l;
    uint64_t cap = 4096;
    void *base = make_log(1, cap, &l);
    CHECK(base != NULL);
    uint64_t off, s, e, v[64], o[64], seed = pq_test_seed();
    for (uint64_t i = 0; i < 2000; i++) {
        CHECK_EQ(append_u64(&l, 0, i, (uint32_t)(pq_test_rand(&seed) % 200), &off), 0);
        CHECK_EQ(off, i);
        CHECK_EQ(pq_log_bounds(&l, 0, &s, &e), 0);
        CHECK_EQ(e, i + 1);
        CHECK(s <= i);
        /* Everything from start to end is readable, dense, whole. */
        uint64_t at = s;
        while (at < e) {
            int n = read_u64(&l, 0, at, v, o, 64, 0);
            CHECK(n > 0);
            for (int k = 0; k < n; k++) {
                CHECK_EQ(o[k], at + k);
                CHECK_EQ(v[k], at + k);
            }
            at += (uint64_t)n;
        }
        if (s > 0)
            CHECK_EQ(read_u64(&l, 0, s - 1, v, o, 1, 0), PQ_ERR_OFFSET_RANGE);
    }
    CHECK_EQ(pq_log_bounds(&l, 0, &s, &e), 0);
    CHECK(s > 1900); /* the oldest were dropped: the ring holds < 100 */
    munmap(base, pq_log_segment_size(1, cap));
    return 0;
}

#define MP_N 20000

static int test_two_appenders_and_reader(void)
{
    pq_log l;
    /* Room for all 2 * MP_N records (~64 bytes each): retention must not
     * overtake a reader that a loaded machine (ASan, CI) slows down; the
     * overtaken reader has a test of its own below. */
    uint64_t cap = 1u << 23;
    void *base = make_log(2, cap, &l);
    CHECK(base != NULL);
    pid_t reader = fork();
    CHECK(reader >= 0);
    if (reader == 0) {
        /* Reads partition 1 in another process as it grows. */
        uint64_t at = 0, v[64], o[64], last[2] = {0, 0};
        while (at < 2 * MP_N) {
            int n = read_u64(&l, 1, at, v, o, 64, 20000);
            CHILD_CHECK(n > 0);
            for (int k = 0; k < n; k++) {
                CHILD_CHECK(o[k] == at + k);
                uint64_t who = v[k] >> 32, seq = v[k] & 0xffffffff;
                CHILD_CHECK(who < 2 && seq == last[who]); /* per-process order */
                last[who]++;
            }
            at += (uint64_t)n;
        }
        _exit(0);
    }
    pid_t kids[2];
    for (uint64_t w = 0; w < 2; w++) {
        kids[w] = fork();
        CHECK(kids[w] >= 0);
        if (kids[w] == 0) {
            uint64_t off, prev = 0;
            for (uint64_t i = 0; i < MP_N; i++) {
                CHILD_CHECK(append_u64(&l, 1, (w << 32) | i, 0, &off) == 0);
                CHILD_CHECK(i == 0 || off > prev);
                prev = off;
            }
            _exit(0);
        }
    }
    for (int w = 0; w < 2; w++)
        CHECK_EQ(pq_test_wait_child(kids[w], 60000), 0);
    CHECK_EQ(pq_test_wait_child(reader, 60000), 0);
    uint64_t s, e;
    CHECK_EQ(pq_log_bounds(&l, 1, &s, &e), 0);
    CHECK_EQ(e, 2 * MP_N);
    CHECK_EQ(pq_log_bounds(&l, 0, &s, &e), 0);
    CHECK_EQ(e, 0);
    munmap(base, pq_log_segment_size(2, cap));
    return 0;
}

/* Appenders lap a reader that reads a small ring: every read either is
 * out of range or returns dense, intact records. */
/* One round of test_lapped_reader. */
static int lapped_reader_round(void)
{
    pq_log l;
    uint64_t cap = 4096;
    void *base = make_log(1, cap, &l);
    CHECK(base != NULL);
    pid_t kid = fork();
    CHECK(kid >= 0);
    if (kid == 0) {
        uint64_t off;
        for (uint64_t i = 0; i < 200000; i++)
            CHILD_CHECK(append_u64(&l, 0, i, (uint32_t)(i % 97), &off) == 0 && off == i);
        _exit(0);
    }
    uint64_t v[64], o[64], s, e;
    while (waitpid(kid, NULL, WNOHANG) == 0) {
        pq_log_bounds(&l, 0, &s, &e);
        int n = read_u64(&l, 0, s, v, o, 64, 0);
        if (n == PQ_ERR_OFFSET_RANGE)
            continue;
        if (n == -ETIMEDOUT)
            continue;
        if (n <= 0)
            fprintf(stderr, "read_u64: %d\n", n);
        CHECK(n > 0);
        for (int k = 0; k < n; k++) {
            CHECK_EQ(o[k], s + k);
            CHECK_EQ(v[k], s + k);
        }
    }
    munmap(base, pq_log_segment_size(1, cap));
    return 0;
}

/* A reader that an appender keeps lapping (retention passes it again and
 * again): each read is either out of range (retry from the new start) or
 * validated and exact, never reported corrupt. 40 rounds: the race this
 * found (pq_log_appending asked after pq_log_start_passed: a false
 * PQ_ERR_CORRUPT) showed in about one round in 40 on a busy machine. */
static int test_lapped_reader(void)
{
    for (int round = 0; round < 40; round++)
        if (lapped_reader_round() != 0)
            return 1;
    return 0;
}

static int append_at(pq_log *l, uint32_t part, uint64_t ts, uint64_t *off)
{
    pq_log_entry e = {.value = "v", .value_len = 1, .type = 1};
    return pq_log_append(l, part, &e, 1, ts, off);
}

/* Retention by age: an append drops the committed records older than its
 * timestamp less the retention time; pq_log_expire does it alone. */
static int test_retention_by_age(void)
{
    pq_log l;
    void *base = make_log_retained(2, 1u << 16, 1000, &l);
    CHECK(base != NULL);
    CHECK_EQ(l.retention_ms, 1000);
    uint64_t off, s, e;
    CHECK_EQ(append_at(&l, 0, 1000, &off), 0);
    CHECK_EQ(append_at(&l, 0, 1500, &off), 0);
    CHECK_EQ(append_at(&l, 0, 2000, &off), 0);
    CHECK_EQ(pq_log_bounds(&l, 0, &s, &e), 0);
    CHECK_EQ(s, 0); /* 1000 is not older than 2000 - 1000 */
    CHECK_EQ(append_at(&l, 0, 2600, &off), 0);
    CHECK_EQ(pq_log_bounds(&l, 0, &s, &e), 0);
    CHECK_EQ(s, 2);
    CHECK_EQ(e, 4);
    CHECK_EQ(pq_log_expire(&l, 0, 3100), 1);
    CHECK_EQ(pq_log_expire(&l, 0, 3100), 0);
    CHECK_EQ(pq_log_bounds(&l, 0, &s, &e), 0);
    CHECK_EQ(s, 3);
    CHECK_EQ(pq_log_expire(&l, 0, 100000), 1);
    CHECK_EQ(pq_log_bounds(&l, 0, &s, &e), 0);
    CHECK_EQ(s, 4);
    CHECK_EQ(e, 4);
    /* Empty now: the next append goes on from offset 4. */
    CHECK_EQ(append_at(&l, 0, 100000, &off), 0);
    CHECK_EQ(off, 4);
    pq_log_record r[4];
    pq_log_batch b;
    CHECK_EQ(pq_log_peek(&l, 0, 4, r, 4, &b), 1);
    CHECK_EQ(pq_log_expire(&l, 1, 100000), 0);
    munmap(base, pq_log_segment_size(2, 1u << 16));
    return 0;
}

/* One wait on several partitions, woken by an append to any of them or by
 * a change of the watched word (a group's rebalance). */
static int test_wait_any(void)
{
    pq_log l;
    void *base = make_log(3, 4096, &l);
    CHECK(base != NULL);
    _Atomic uint64_t *gen = pq_test_shared(64);
    CHECK(gen != NULL);
    uint32_t parts[2] = {0, 2};
    uint64_t offs[2] = {0, 0};
    CHECK_EQ(pq_log_wait_any(&l, parts, offs, 2, gen, 0, pq_test_now_ns() + 20000000, 1000),
             -ETIMEDOUT);
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t off;
        pq_test_sleep_ms(30);
        CHILD_CHECK(append_u64(&l, 2, 9, 0, &off) == 0);
        pq_test_sleep_ms(30);
        atomic_store(gen, 1);
        pq_event_notify(&l.shared->appended, INT32_MAX);
        _exit(0);
    }
    CHECK_EQ(pq_log_wait_any(&l, parts, offs, 2, gen, 0, pq_test_now_ns() + 10000000000LL, 0),
             0);
    uint64_t s, e;
    CHECK_EQ(pq_log_bounds(&l, 2, &s, &e), 0);
    CHECK_EQ(e, 1);
    offs[1] = 1;
    CHECK_EQ(pq_log_wait_any(&l, parts, offs, 2, gen, 0, pq_test_now_ns() + 10000000000LL, 0),
             0);
    CHECK_EQ(atomic_load(gen), 1);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    munmap(base, pq_log_segment_size(3, 4096));
    return 0;
}

/* A holder that died between its stores of start_offset and start_pos:
 * the next holder derives start_offset from start_pos again, so the
 * start is neither skipped nor counted twice. */
static int test_holder_dies_moving_start(void)
{
    pq_log l;
    void *base = make_log(1, 4096, &l);
    CHECK(base != NULL);
    uint64_t off, s0, e0, s, e, v[64], o[64];
    for (uint64_t i = 0; i < 200; i++)
        CHECK_EQ(append_u64(&l, 0, i, 0, &off), 0);
    CHECK_EQ(pq_log_bounds(&l, 0, &s0, &e0), 0);
    CHECK(s0 > 0);
    pq_log_part *pt = (pq_log_part *)l.parts_base;
    pid_t pid = fork();
    if (pid == 0) {
        CHILD_CHECK(pthread_mutex_lock(&pt->claim_lock) == 0);
        atomic_store(&pt->start_offset, s0 + 2); /* start_pos not moved yet */
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(append_u64(&l, 0, 200, 0, &off), 0);
    CHECK_EQ(off, 200);
    CHECK_EQ(pq_log_bounds(&l, 0, &s, &e), 0);
    CHECK_EQ(e, 201);
    /* Whatever the append dropped, the start is the record at start_pos:
     * reading from it gives dense offsets with matching values. */
    int n = read_u64(&l, 0, s, v, o, 64, 0);
    CHECK(n > 0);
    for (int k = 0; k < n; k++) {
        CHECK_EQ(o[k], s + k);
        CHECK_EQ(v[k], s + k);
    }
    CHECK(s <= s0 + 1);
    munmap(base, pq_log_segment_size(1, 4096));
    return 0;
}

/* The payload of the record holding `offset` in partition 0, found by a
 * walk of the ring the test does itself (the library's find is what is
 * under test). */
static uint8_t *payload_of(pq_log *l, uint64_t offset)
{
    pq_log_part *pt = (pq_log_part *)l->parts_base;
    uint8_t *data = l->parts_base + sizeof(pq_log_part) +
                    l->index_entries * sizeof(pq_log_index_entry);
    uint64_t p = atomic_load(&pt->start_pos), tl = atomic_load(&pt->tail);
    uint64_t o = atomic_load(&pt->start_offset);
    while (p != tl) {
        pq_record_header *rec = (pq_record_header *)(data + (p & l->mask));
        uint64_t ctl = atomic_load(&rec->ctl);
        if (pq_ctl_state(ctl) != PQ_REC_PADDING) {
            if (o == offset)
                return (uint8_t *)rec + PQ_RECORD_HEADER;
            o++;
        }
        p += pq_record_size(pq_ctl_len(ctl));
    }
    return NULL;
}

/*
 * One damaged record-offset field (external damage, or a stray write):
 * every read, wait and repair at or after it ends, in PQ_ERR_CORRUPT for
 * the damaged record and with the right records for the others (they are
 * found by counting from the start or an index entry, not by trusting
 * the damaged field). Before the fix a read past it spun for ever (the
 * stale-index branch walked from the start again and again); alarm()
 * turns such a hang into a failure.
 */
static int test_damaged_offset_field(void)
{
    static const uint64_t bad_values[] = {1000000, 3, UINT64_MAX, 101};
    for (size_t bv = 0; bv < sizeof bad_values / sizeof bad_values[0]; bv++) {
        pq_log l;
        void *base = make_log(1, 65536, &l);
        CHECK(base != NULL);
        uint64_t off, v[64], o[64], s, e;
        for (uint64_t i = 0; i < 200; i++)
            CHECK_EQ(append_u64(&l, 0, i, 0, &off), 0);
        CHECK_EQ(pq_log_bounds(&l, 0, &s, &e), 0);
        CHECK_EQ(s, 0);
        CHECK_EQ(e, 200);
        uint8_t *pl = payload_of(&l, 70);
        CHECK(pl != NULL);
        memcpy(pl, &bad_values[bv], sizeof bad_values[bv]);
        alarm(20);
        /* The damaged record itself: corrupt, from the start or from the
         * index entry at 64, and for a single-record or a batch read. */
        CHECK_EQ(read_u64(&l, 0, 70, v, o, 1, 0), PQ_ERR_CORRUPT);
        CHECK_EQ(read_u64(&l, 0, 70, v, o, 64, 0), PQ_ERR_CORRUPT);
        /* A batch that reaches it stops at it: the records before come
         * back, the next read names it. */
        int n = read_u64(&l, 0, 60, v, o, 64, 0);
        CHECK_EQ(n, 10);
        for (int k = 0; k < n; k++)
            CHECK_EQ(v[k], 60 + k);
        /* Past it (above the index entry at 64, and from the entry at
         * 128): found by counting, with the right values. */
        for (uint64_t at = 71; at < 200; at += 29) {
            n = read_u64(&l, 0, at, v, o, 64, 0);
            CHECK(n > 0);
            for (int k = 0; k < n; k++) {
                CHECK_EQ(o[k], at + k);
                CHECK_EQ(v[k], at + k);
            }
        }
        /* Before it, nothing changes. */
        n = read_u64(&l, 0, 0, v, o, 64, 0);
        CHECK_EQ(n, 64);
        /* wait (the readiness check peeks) and repair end too. */
        CHECK_EQ(pq_log_wait(&l, 0, 70, pq_test_now_ns() + 1000000000, 1000), 0);
        CHECK_EQ(pq_log_repair(&l, 0, 70), 0);
        CHECK_EQ(pq_log_repair(&l, 0, 100), 0);
        alarm(0);
        munmap(base, pq_log_segment_size(1, 65536));
    }
    return 0;
}

/* An index entry whose position field points at a later record (damage):
 * counting from it would name the wrong records; the record found must
 * carry the offset asked for, else the walk starts again from the start.
 * Every offset still reads right, and none waits for ever. */
static int test_damaged_index_entry(void)
{
    pq_log l;
    void *base = make_log(1, 65536, &l);
    CHECK(base != NULL);
    uint64_t off, v[64], o[64];
    for (uint64_t i = 0; i < 200; i++)
        CHECK_EQ(append_u64(&l, 0, i, 0, &off), 0);
    pq_log_index_entry *ix = (pq_log_index_entry *)(l.parts_base + sizeof(pq_log_part));
    pq_log_index_entry *ent = &ix[(128 / PQ_LOG_INDEX_EVERY) % l.index_entries];
    CHECK_EQ(atomic_load(&ent->offset), 128);
    uint8_t *later = payload_of(&l, 190);
    uint8_t *first = payload_of(&l, 128);
    CHECK(later != NULL && first != NULL);
    atomic_store(&ent->pos, atomic_load(&ent->pos) + (uint64_t)(later - first));
    alarm(20);
    for (uint64_t at = 128; at < 200; at += 7) {
        int n = read_u64(&l, 0, at, v, o, 64, 0);
        CHECK_EQ(n, (int)(200 - at < 64 ? 200 - at : 64));
        for (int k = 0; k < n; k++) {
            CHECK_EQ(o[k], at + k);
            CHECK_EQ(v[k], at + k);
        }
    }
    alarm(0);
    munmap(base, pq_log_segment_size(1, 65536));
    return 0;
}

int main(void)
{
    printf("test_log (seed %#llx)\n", (unsigned long long)pq_test_seed());
    RUN(test_basic);
    RUN(test_retention);
    RUN(test_two_appenders_and_reader);
    RUN(test_lapped_reader);
    RUN(test_retention_by_age);
    RUN(test_wait_any);
    RUN(test_holder_dies_moving_start);
    RUN(test_damaged_offset_field);
    RUN(test_damaged_index_entry);
    return 0;
}
