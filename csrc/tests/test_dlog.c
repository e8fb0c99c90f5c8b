/* test_dlog.c - the control file of a directory-mode log (pq_dlog.h):
 * appends and their published end, rolls under the seqlock, retention of
 * the start, holders that die inside an append or a roll, and waits. */
#include "pq_test.h"

#include "../pq_dlog.h"

#define SEGB 8192u

struct ctl {
    void *base;
    size_t size;
    pq_dlog d;
};

static int ctl_make(struct ctl *c, uint32_t parts)
{
    c->size = pq_dlog_control_size(parts, 4);
    c->base = c->size ? pq_test_shared(c->size) : NULL;
    if (c->base == NULL || pq_dlog_create(c->base, c->size, parts, SEGB, 4) != 0)
        return -1;
    return pq_dlog_open(&c->d, c->base, c->size);
}

/* A segment "file": shared anonymous memory for data and index. */
static int seg_make(pq_dseg *s, uint64_t base_offset)
{
    uint64_t ixs = pq_dseg_index_file_size(SEGB);
    s->data = pq_test_shared(SEGB);
    s->ix = pq_test_shared(ixs);
    if (s->data == NULL || s->ix == NULL)
        return -1;
    s->data_size = SEGB;
    s->base_offset = base_offset;
    s->ix_cap = (ixs - sizeof(pq_dseg_index_header)) / sizeof(pq_dseg_index_entry);
    return pq_dseg_index_init(s->ix, ixs, base_offset);
}

static int append_one(pq_dlog *d, uint32_t part, pq_dseg *s, uint32_t len, uint64_t *off)
{
    static uint8_t buf[4096];
    memset(buf, 0x5a, sizeof buf);
    pq_log_entry e = {.value = buf, .value_len = len, .type = 1};
    uint64_t need = 0;
    int rc = pq_dlog_lock(d, part);
    if (rc < 0)
        return rc;
    rc = pq_dlog_append(d, part, s, &e, 1, 77, off, &need);
    if (rc == -ENOBUFS) {
        /* The anonymous "file" has all its pages: say so, as the binding
         * does after allocating the blocks. */
        if (need <= s->data_size && pq_dlog_set_allocated(d, part, s->data_size) == 0)
            rc = pq_dlog_append(d, part, s, &e, 1, 77, off, &need);
    }
    pq_dlog_unlock(d, part);
    if (rc > 0)
        pq_dlog_notify(d, part);
    return rc;
}

static int test_append_roll_start(void)
{
    struct ctl c;
    CHECK(ctl_make(&c, 2) == 0);
    CHECK_EQ(c.d.partitions, 2);
    CHECK_EQ(c.d.segment_bytes, SEGB);
    pq_dseg s0, s1, wrong;
    CHECK(seg_make(&s0, 0) == 0);
    uint64_t off;
    int appended = 0;
    /* 1040-byte records: 7 fit in 8192. */
    while (append_one(&c.d, 0, &s0, 1000, &off) == 1)
        appended++;
    CHECK_EQ(appended, 7);
    pq_dlog_view v;
    CHECK_EQ(pq_dlog_snapshot(&c.d, 0, &v), 0);
    CHECK_EQ(v.end_offset, 7);
    CHECK_EQ(v.end_pos, 7 * 1040);
    CHECK_EQ(v.active_base, 0);
    CHECK_EQ(v.start_offset, 0);
    uint64_t gen0 = v.seg_gen;
    /* The wrong segment is refused. */
    CHECK(seg_make(&wrong, 3) == 0);
    CHECK_EQ(append_one(&c.d, 0, &wrong, 10, &off), -ESTALE);
    /* Roll: seals s0, the next segment starts at 7. */
    uint64_t nb;
    CHECK_EQ(pq_dlog_lock(&c.d, 0), 0);
    CHECK_EQ(pq_dlog_roll(&c.d, 0, &s0, &nb), 0);
    pq_dlog_unlock(&c.d, 0);
    CHECK_EQ(nb, 7);
    pq_dseg_index_header h;
    CHECK_EQ(pq_dseg_index_read(s0.ix, pq_dseg_index_file_size(SEGB), 0, &h), 0);
    CHECK_EQ(h.end_pos, 7 * 1040);
    CHECK_EQ(h.records, 7);
    CHECK_EQ(h.max_timestamp_ms, 77);
    CHECK_EQ(append_one(&c.d, 0, &s0, 10, &off), -ESTALE);
    CHECK(seg_make(&s1, 7) == 0);
    CHECK_EQ(append_one(&c.d, 0, &s1, 10, &off), 1);
    CHECK_EQ(off, 7);
    CHECK_EQ(pq_dlog_snapshot(&c.d, 0, &v), 0);
    CHECK_EQ(v.active_base, 7);
    CHECK_EQ(v.end_offset, 8);
    CHECK_EQ(v.end_pos, 56);
    CHECK(v.seg_gen != gen0);
    uint64_t closed;
    CHECK_EQ(pq_dlog_active_stats(&c.d, 0, NULL, NULL, &closed), 0);
    CHECK_EQ(closed, 7 * 1040);
    /* Retention drops segment 0. */
    CHECK_EQ(pq_dlog_lock(&c.d, 0), 0);
    CHECK_EQ(pq_dlog_set_start(&c.d, 0, 8, 1), -EINVAL); /* beyond the active base */
    CHECK_EQ(pq_dlog_set_start(&c.d, 0, 7, 7 * 1040), 0);
    CHECK_EQ(pq_dlog_set_start(&c.d, 0, 6, 0), -EINVAL); /* backwards */
    pq_dlog_unlock(&c.d, 0);
    CHECK_EQ(pq_dlog_snapshot(&c.d, 0, &v), 0);
    CHECK_EQ(v.start_offset, 7);
    CHECK_EQ(pq_dlog_active_stats(&c.d, 0, NULL, NULL, &closed), 0);
    CHECK_EQ(closed, 0);
    /* The other partition is untouched. */
    CHECK_EQ(pq_dlog_snapshot(&c.d, 1, &v), 0);
    CHECK_EQ(v.end_offset, 0);
    return 0;
}

/* The file's disk blocks: an append past them asks for more (-ENOBUFS and
 * how far), and goes on once they are there; a roll starts at none. */
static int test_allocation(void)
{
    struct ctl c;
    CHECK(ctl_make(&c, 1) == 0);
    pq_dseg s;
    CHECK(seg_make(&s, 0) == 0);
    uint8_t buf[100] = {0};
    pq_log_entry e[2] = {{.value = buf, .value_len = 100, .type = 1},
                         {.value = buf, .value_len = 100, .type = 1}};
    uint64_t off, need = 0;
    CHECK_EQ(pq_dlog_lock(&c.d, 0), 0);
    CHECK_EQ(pq_dlog_append(&c.d, 0, &s, e, 2, 1, &off, &need), -ENOBUFS);
    CHECK_EQ(need, 2 * 144);
    CHECK_EQ(pq_dlog_set_allocated(&c.d, 0, 200), 0);
    CHECK_EQ(pq_dlog_append(&c.d, 0, &s, e, 2, 1, &off, &need), -ENOBUFS);
    CHECK_EQ(pq_dlog_append(&c.d, 0, &s, e, 1, 1, &off, &need), 1);
    CHECK_EQ(pq_dlog_set_allocated(&c.d, 0, SEGB + 1), -EINVAL);
    CHECK_EQ(pq_dlog_set_allocated(&c.d, 0, SEGB), 0);
    CHECK_EQ(pq_dlog_append(&c.d, 0, &s, e, 2, 1, &off, &need), 2);
    CHECK_EQ(off, 1);
    uint64_t nb;
    CHECK_EQ(pq_dlog_roll(&c.d, 0, &s, &nb), 0);
    CHECK_EQ(atomic_load(&c.d.parts[0].allocated), 0);
    pq_dlog_unlock(&c.d, 0);
    return 0;
}

static int test_open_validates(void)
{
    struct ctl c;
    CHECK(ctl_make(&c, 3) == 0);
    pq_dlog d;
    CHECK_EQ(pq_dlog_open(&d, c.base, c.size - 4096), PQ_ERR_TRUNCATED);
    pq_segment_header *h = c.base;
    h->kind = PQ_KIND_LOG;
    CHECK_EQ(pq_dlog_open(&d, c.base, c.size), PQ_ERR_KIND);
    h->kind = PQ_KIND_LOG_DIR;
    h->params[PQ_DLOG_PARAM_SEGMENT_BYTES] = 12345;
    CHECK_EQ(pq_dlog_open(&d, c.base, c.size), PQ_ERR_CORRUPT);
    h->params[PQ_DLOG_PARAM_SEGMENT_BYTES] = SEGB;
    CHECK_EQ(pq_dlog_open(&d, c.base, c.size), 0);
    CHECK_EQ(pq_dlog_create(c.base, c.size, 0, SEGB, 4), -EINVAL);
    CHECK_EQ(pq_dlog_create(c.base, c.size, 3, 1000, 4), -EINVAL);
    return 0;
}

/* A holder dies after writing bytes past the end it never published: the
 * next append zeroes them, so no leftover follows its shorter record. */
static int test_holder_dies_mid_append(void)
{
    struct ctl c;
    CHECK(ctl_make(&c, 1) == 0);
    pq_dseg s;
    CHECK(seg_make(&s, 0) == 0);
    uint64_t off;
    CHECK_EQ(append_one(&c.d, 0, &s, 100, &off), 1);
    pid_t pid = fork();
    if (pid == 0) {
        CHILD_CHECK(pq_dlog_lock(&c.d, 0) == 0);
        pq_dlog_part *pt = &c.d.parts[0];
        uint64_t end = atomic_load(&pt->end_pos);
        atomic_store(&pt->claim_end, end + 3000);
        memset(s.data + end, 0x77, 3000); /* a batch half written */
        _exit(0);                          /* dies holding the lock */
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(append_one(&c.d, 0, &s, 100, &off), 1);
    CHECK_EQ(off, 1);
    pq_dlog_view v;
    CHECK_EQ(pq_dlog_snapshot(&c.d, 0, &v), 0);
    CHECK_EQ(v.end_offset, 2);
    CHECK_EQ(pq_dseg_dirty_bytes(s.data, v.end_pos, SEGB), 0);
    pq_dseg_cursor cur;
    pq_dseg_cursor_empty(&cur, 0);
    int torn;
    CHECK_EQ(pq_dseg_scan(&s, SEGB, &cur, 0, &torn), 0);
    CHECK_EQ(torn, 0);
    CHECK_EQ(cur.next_offset, 2);
    return 0;
}

/* A roller dies with the seqlock odd: readers do not spin for ever, the
 * next holder of the lock (here, the reader itself) finishes the roll. */
static int test_roller_dies_mid_roll(void)
{
    struct ctl c;
    CHECK(ctl_make(&c, 1) == 0);
    pq_dseg s;
    CHECK(seg_make(&s, 0) == 0);
    uint64_t off;
    for (int i = 0; i < 3; i++)
        CHECK_EQ(append_one(&c.d, 0, &s, 100, &off), 1);
    pid_t pid = fork();
    if (pid == 0) {
        CHILD_CHECK(pq_dlog_lock(&c.d, 0) == 0);
        pq_dlog_part *pt = &c.d.parts[0];
        /* pq_dlog_roll up to its seqlock opening, then death. */
        atomic_store(&pt->roll_closed_bytes, atomic_load(&pt->end_pos));
        atomic_store(&pt->roll_seg_gen, atomic_load(&pt->seg_gen) + 1);
        atomic_store(&pt->seq, atomic_load(&pt->seq) + 1);
        atomic_store(&pt->end_pos, 12345); /* a store of the roll half done */
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    pq_dlog_view v;
    CHECK_EQ(pq_dlog_snapshot(&c.d, 0, &v), 0);
    CHECK_EQ(v.active_base, 3);
    CHECK_EQ(v.end_pos, 0);
    CHECK_EQ(v.end_offset, 3);
    CHECK_EQ(v.index_count, 0);
    uint64_t closed;
    CHECK_EQ(pq_dlog_active_stats(&c.d, 0, NULL, NULL, &closed), 0);
    CHECK_EQ(closed, 3 * 144);
    CHECK_EQ(atomic_load(&c.d.parts[0].seq) & 1, 0);
    return 0;
}

/* A holder dies inside an append after publishing part of it (end_pos
 * stored, end_offset not): the next append redoes the publication from
 * the saved cursor, so no offset is given twice and the file stays whole. */
static int test_holder_dies_mid_publication(void)
{
    struct ctl c;
    CHECK(ctl_make(&c, 1) == 0);
    pq_dseg s;
    CHECK(seg_make(&s, 0) == 0);
    uint64_t off;
    CHECK_EQ(append_one(&c.d, 0, &s, 100, &off), 1);
    pid_t pid = fork();
    if (pid == 0) {
        CHILD_CHECK(pq_dlog_lock(&c.d, 0) == 0);
        pq_dlog_part *pt = &c.d.parts[0];
        /* pq_dlog_append by hand, up to its end_pos store. */
        pq_dseg_cursor cur = {
            .pos = atomic_load(&pt->end_pos), .next_offset = atomic_load(&pt->end_offset),
            .index_count = atomic_load(&pt->index_count),
            .last_index_pos = atomic_load(&pt->last_index_pos),
            .records = atomic_load(&pt->records),
            .max_timestamp_ms = atomic_load(&pt->max_timestamp_ms)};
        atomic_store(&pt->claim_pos, cur.pos);
        atomic_store(&pt->claim_offset, cur.next_offset);
        atomic_store(&pt->claim_index_count, cur.index_count);
        atomic_store(&pt->claim_last_index_pos, cur.last_index_pos);
        atomic_store(&pt->claim_records, cur.records);
        atomic_store(&pt->claim_max_timestamp_ms, cur.max_timestamp_ms);
        atomic_store(&pt->claim_end, cur.pos + 3 * 144 + 1000);
        static uint8_t buf[100];
        pq_log_entry e[3];
        for (int i = 0; i < 3; i++)
            e[i] = (pq_log_entry){.value = buf, .value_len = 100, .type = 1};
        CHILD_CHECK(pq_dseg_write(&s, &cur, e, 3, 5) == 3);
        memset(s.data + cur.pos, 0x42, 1000); /* a fourth one, half written */
        atomic_store(&pt->end_pos, cur.pos);   /* published in part ... */
        _exit(0);                              /* ... and dead */
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(append_one(&c.d, 0, &s, 100, &off), 1);
    CHECK_EQ(off, 4); /* 0, then the dead one's 1..3, then this */
    pq_dlog_view v;
    CHECK_EQ(pq_dlog_snapshot(&c.d, 0, &v), 0);
    CHECK_EQ(v.end_offset, 5);
    CHECK_EQ(v.end_pos, 5 * 144);
    CHECK_EQ(pq_dseg_dirty_bytes(s.data, v.end_pos, SEGB), 0);
    pq_log_record r[8];
    uint64_t next, bad;
    CHECK_EQ(pq_dseg_peek(&s, v.end_pos, v.index_count, 0, r, 8, &next, &bad), 5);
    CHECK_EQ(next, 5);
    return 0;
}

/* A roller dies after sealing the active segment's index but before the
 * switch: the segment is still active, and the next append unseals it. */
static int test_roller_dies_after_seal(void)
{
    struct ctl c;
    CHECK(ctl_make(&c, 1) == 0);
    pq_dseg s;
    CHECK(seg_make(&s, 0) == 0);
    uint64_t off;
    CHECK_EQ(append_one(&c.d, 0, &s, 100, &off), 1);
    pq_dseg_cursor cur;
    pq_dseg_cursor_empty(&cur, 0);
    cur.pos = 144;
    cur.next_offset = 1;
    CHECK_EQ(pq_dseg_index_seal(&s, &cur), 0);
    pq_dseg_index_header h;
    uint64_t ixs = pq_dseg_index_file_size(SEGB);
    CHECK_EQ(pq_dseg_index_read(s.ix, ixs, 0, &h), 0);
    CHECK_EQ(append_one(&c.d, 0, &s, 100, &off), 1);
    CHECK_EQ(off, 1);
    CHECK_EQ(pq_dseg_index_read(s.ix, ixs, 0, &h), -ENODATA);
    uint64_t nb;
    CHECK_EQ(pq_dlog_lock(&c.d, 0), 0);
    CHECK_EQ(pq_dlog_roll(&c.d, 0, &s, &nb), 0);
    pq_dlog_unlock(&c.d, 0);
    CHECK_EQ(pq_dseg_index_read(s.ix, ixs, 0, &h), 0);
    CHECK_EQ(h.records, 2);
    CHECK_EQ(h.end_pos, 288);
    /* An empty active segment is not rolled. */
    pq_dseg s2;
    CHECK(seg_make(&s2, nb) == 0);
    CHECK_EQ(pq_dlog_lock(&c.d, 0), 0);
    CHECK_EQ(pq_dlog_roll(&c.d, 0, &s2, &nb), -EINVAL);
    pq_dlog_unlock(&c.d, 0);
    return 0;
}

static int test_wait_any_and_rebalance_word(void)
{
    struct ctl c;
    CHECK(ctl_make(&c, 3) == 0);
    pq_dseg s;
    CHECK(seg_make(&s, 0) == 0);
    uint32_t parts[2] = {0, 2};
    uint64_t offs[2] = {0, 0};
    _Atomic uint64_t *gen = pq_test_shared(64);
    CHECK(gen != NULL);
    int64_t t0 = pq_test_now_ns();
    CHECK_EQ(pq_dlog_wait_any(&c.d, parts, offs, 2, gen, 0, t0 + 20000000, 1000), -ETIMEDOUT);
    pid_t pid = fork();
    if (pid == 0) {
        pq_test_sleep_ms(30);
        uint64_t o;
        CHILD_CHECK(append_one(&c.d, 2, &s, 10, &o) == 1);
        pq_test_sleep_ms(30);
        atomic_store(gen, 1);
        pq_event_notify(&c.d.shared->appended, INT32_MAX);
        _exit(0);
    }
    CHECK_EQ(pq_dlog_wait_any(&c.d, parts, offs, 2, gen, 0, pq_test_now_ns() + 10000000000,
                              0), 0);
    pq_dlog_view v;
    CHECK_EQ(pq_dlog_snapshot(&c.d, 2, &v), 0);
    CHECK_EQ(v.end_offset, 1);
    offs[1] = 1;
    CHECK_EQ(pq_dlog_wait_any(&c.d, parts, offs, 2, gen, 0, pq_test_now_ns() + 10000000000,
                              0), 0);
    CHECK_EQ(atomic_load(gen), 1);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    /* A single partition's wait, and out of range counts as ready. */
    CHECK_EQ(pq_dlog_wait(&c.d, 2, 0, pq_test_now_ns() + 1000000, 0), 0);
    CHECK_EQ(pq_dlog_wait(&c.d, 2, 1, pq_test_now_ns() + 1000000, 0), -ETIMEDOUT);
    return 0;
}

/* trylock: -EBUSY while a live process holds the lock; the lock (and its
 * recovery) once the holder has died holding it. */
static int test_trylock(void)
{
    struct ctl c;
    CHECK(ctl_make(&c, 1) == 0);
    int go[2], held[2];
    CHECK(pipe(go) == 0 && pipe(held) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        char b = 1;
        CHILD_CHECK(pq_dlog_lock(&c.d, 0) == 0);
        atomic_store(&c.d.parts[0].claim_end, 100); /* "inside an append" */
        CHILD_CHECK(write(held[1], &b, 1) == 1);
        CHILD_CHECK(read(go[0], &b, 1) == 1);
        _exit(0); /* dies holding it */
    }
    char b = 0;
    CHECK(read(held[0], &b, 1) == 1);
    CHECK_EQ(pq_dlog_trylock(&c.d, 0), -EBUSY);
    CHECK(write(go[1], &b, 1) == 1);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(pq_dlog_trylock(&c.d, 0), 0);
    CHECK_EQ(atomic_load(&c.d.parts[0].torn), 1); /* the next append repairs */
    pq_dlog_unlock(&c.d, 0);
    CHECK_EQ(pq_dlog_trylock(&c.d, 3), -EINVAL);
    return 0;
}

static int test_sync_due(void)
{
    struct ctl c;
    CHECK(ctl_make(&c, 1) == 0);
    CHECK_EQ(pq_dlog_sync_due(&c.d, 0, 1000000000), 1);
    CHECK_EQ(pq_dlog_sync_due(&c.d, 0, 1000000000), 0);
    CHECK_EQ(pq_dlog_sync_due(&c.d, 0, 0), 1);
    return 0;
}

int main(void)
{
    printf("test_dlog\n");
    RUN(test_append_roll_start);
    RUN(test_allocation);
    RUN(test_open_validates);
    RUN(test_holder_dies_mid_append);
    RUN(test_roller_dies_mid_roll);
    RUN(test_holder_dies_mid_publication);
    RUN(test_roller_dies_after_seal);
    RUN(test_wait_any_and_rebalance_word);
    RUN(test_trylock);
    RUN(test_sync_due);
    return pq_test_result();
}
