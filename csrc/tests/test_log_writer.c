/*
 * test_log_writer.c - a memory-mode Log's retention and a record still
 * being written (docs/design.md, "Log: a stopped appender"): retention by
 * size never passes a record whose appender is alive (the append answers
 * PQ_ERR_LOG_WRITER and changes nothing; pq_log_wait_writer waits for the
 * commit), passes one whose appender is dead, and a commit never
 * overwrites a header it does not own (-ESTALE). Built against the core
 * compiled with -DPQ_FAULT_INJECTION (the appender stops itself at
 * mid_copy).
 */
#include "pq_test.h"

#include "../pq_fault.h"
#include "../pq_log.h"
#include "../pq_log_internal.h"
#include "../pq_proc.h"
#include "../pq_record.h"

#ifndef PQ_FAULT_INJECTION
#error "test_log_writer is built with -DPQ_FAULT_INJECTION"
#endif

#define CAP 4096u
#define VLEN 200u /* record: 16 + 32 + 1 + 200 -> 256 bytes: 16 per ring, no padding */

static void *make_log(pq_log *l)
{
    size_t size = pq_log_segment_size(1, CAP);
    void *base = size ? pq_test_shared(size) : NULL;
    if (base == NULL || pq_log_create(base, size, 1, CAP, 0, 0) != 0 ||
        pq_log_open(l, base, size) != 0)
        return NULL;
    return base;
}

/* Append one record of VLEN bytes of `byte`. */
static int append_byte(pq_log *l, uint8_t byte, uint64_t *off, pq_log_writer *wr)
{
    uint8_t v[VLEN];
    memset(v, byte, sizeof v);
    pq_log_entry e = {.key = "k", .key_len = 1, .value = v, .value_len = VLEN, .type = 1};
    return pq_log_append_ex(l, 0, &e, 1, 1234, off, NULL, wr);
}

static pq_record_header *header_at(pq_log *l, uint64_t pos)
{
    return (pq_record_header *)(pq_log_data(l, 0) + (pos & l->mask));
}

/* 0 when every record from the start reads back as a whole record of one
 * byte value (the value its offset was appended with: byte_of). */
static int read_all_intact(pq_log *l, uint8_t (*byte_of)(uint64_t))
{
    uint64_t s, e;
    pq_log_record r[64];
    pq_log_batch b;
    CHECK_EQ(pq_log_bounds(l, 0, &s, &e), 0);
    for (uint64_t o = s; o < e;) {
        int n = pq_log_peek(l, 0, o, r, 64, &b);
        CHECK(n > 0);
        for (int i = 0; i < n; i++) {
            CHECK_EQ(r[i].offset, o + (uint64_t)i);
            CHECK_EQ(r[i].value_len, VLEN);
            for (uint32_t k = 0; k < VLEN; k++)
                CHECK_EQ(r[i].value[k], byte_of(o + (uint64_t)i));
        }
        CHECK_EQ(pq_log_validate(l, 0, &b), 0);
        o += (uint64_t)n;
    }
    return 0;
}

static uint8_t byte_plus_one(uint64_t off) { return (uint8_t)(off + 1); }

/*
 * An appender stopped at mid_copy (alive): the appends of a whole ring
 * stop at its record with PQ_ERR_LOG_WRITER, naming it, and change
 * nothing; pq_log_wait_writer times out while it is stopped and returns
 * once it committed; then the appends go on, and every record reads back
 * intact (before the fix they overwrote its space, and its commit wrote a
 * stale header over a newer record).
 */
static int test_live_writer_is_waited_for(void)
{
    pq_log l;
    void *base = make_log(&l);
    CHECK(base != NULL);
    uint64_t off, s, e;
    pq_log_writer wr;
    CHECK_EQ(append_byte(&l, 1, &off, NULL), 0); /* offset 0 */
    pid_t pid = fork();
    if (pid == 0) {
        CHILD_CHECK(setenv("PYQUEUE_FAULT", "mid_copy", 1) == 0);
        PQ_FAULT_REARM();
        _exit(append_byte(&l, 2, &off, NULL) == 0 && off == 1 ? 0 : 1); /* offset 1 */
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, WUNTRACED), pid);
    CHECK(WIFSTOPPED(status));
    int rc = 0;
    uint64_t o = 2;
    for (; o < 40; o++) {
        rc = append_byte(&l, (uint8_t)(o + 1), &off, &wr);
        if (rc != 0)
            break;
        CHECK_EQ(off, o);
    }
    CHECK_EQ(rc, PQ_ERR_LOG_WRITER);
    CHECK_EQ(o, 17); /* the ring holds 16: offset 17 needs offset 1's space */
    CHECK_EQ(wr.pid, pid);
    CHECK_EQ(wr.offset, 1);
    CHECK_EQ(wr.pos, 256);
    CHECK_EQ(pq_ctl_state(wr.ctl), PQ_REC_CLAIMED);
    CHECK_EQ(pq_log_bounds(&l, 0, &s, &e), 0);
    CHECK_EQ(s, 1); /* offset 0 (committed) was dropped, the claimed one not */
    CHECK_EQ(e, 17);
    CHECK_EQ(pq_log_wait_writer(&l, 0, &wr, pq_test_now_ns() + 30000000), -ETIMEDOUT);
    CHECK_EQ(kill(pid, SIGCONT), 0);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(pq_log_wait_writer(&l, 0, &wr, pq_test_now_ns() + 10000000000LL), 0);
    CHECK_EQ(read_all_intact(&l, byte_plus_one), 0);
    for (; o < 40; o++) {
        CHECK_EQ(append_byte(&l, (uint8_t)(o + 1), &off, &wr), 0);
        CHECK_EQ(off, o);
    }
    CHECK_EQ(read_all_intact(&l, byte_plus_one), 0);
    munmap(base, pq_log_segment_size(1, CAP));
    return 0;
}

/* A record claimed by a dead appender is passed (abandoned) as before. */
static int test_dead_writer_is_passed(void)
{
    pq_log l;
    void *base = make_log(&l);
    CHECK(base != NULL);
    uint64_t off, s, e;
    pq_log_writer wr;
    CHECK_EQ(append_byte(&l, 1, &off, NULL), 0);
    pid_t pid = fork();
    if (pid == 0) {
        CHILD_CHECK(setenv("PYQUEUE_FAULT", "mid_copy", 1) == 0);
        PQ_FAULT_REARM();
        append_byte(&l, 2, &off, NULL);
        _exit(1);
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, WUNTRACED), pid);
    CHECK(WIFSTOPPED(status));
    CHECK_EQ(kill(pid, SIGKILL), 0);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 128 + SIGKILL);
    for (uint64_t o = 2; o < 40; o++) {
        CHECK_EQ(append_byte(&l, (uint8_t)(o + 1), &off, &wr), 0);
        CHECK_EQ(off, o);
    }
    CHECK_EQ(pq_log_bounds(&l, 0, &s, &e), 0);
    CHECK_EQ(e, 40);
    CHECK_EQ(read_all_intact(&l, byte_plus_one), 0);
    munmap(base, pq_log_segment_size(1, CAP));
    return 0;
}

/*
 * Defence in depth: an appender judged dead while it was not (here: its
 * owner word made to name a dead process, as a pid from another
 * namespace would be) has its record passed and its space reused by a
 * record of the same size at the same place in the ring. Its commit
 * must leave that record's header alone and say so (-ESTALE); a plain
 * store wrote its own stale header (the wrong lap's tag) there.
 */
static int test_commit_leaves_a_newer_header_alone(void)
{
    pq_log l;
    void *base = make_log(&l);
    CHECK(base != NULL);
    uint64_t off;
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    CHECK_EQ(pq_test_wait_child(dead, 10000), 0);
    pid_t pid = fork();
    if (pid == 0) {
        CHILD_CHECK(setenv("PYQUEUE_FAULT", "mid_copy", 1) == 0);
        PQ_FAULT_REARM();
        int rc = append_byte(&l, 1, &off, NULL); /* offset 0, at position 0 */
        _exit(rc == -ESTALE && off == 0 ? 0 : 1);
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, WUNTRACED), pid);
    CHECK(WIFSTOPPED(status));
    pq_proc_id gone = {dead, 0};
    atomic_store(&header_at(&l, 0)->owner, pq_proc_pack(&gone));
    for (uint64_t o = 1; o <= 16; o++) { /* offset 16 lands at position 4096: ring offset 0 */
        CHECK_EQ(append_byte(&l, 7, &off, NULL), 0);
        CHECK_EQ(off, o);
    }
    uint64_t newer = atomic_load(&header_at(&l, 0)->ctl);
    CHECK_EQ(pq_ctl_tag(newer), pq_record_tag(CAP));
    CHECK_EQ(kill(pid, SIGCONT), 0);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(atomic_load(&header_at(&l, 0)->ctl), newer);
    pq_log_record r;
    pq_log_batch b;
    CHECK_EQ(pq_log_peek(&l, 0, 16, &r, 1, &b), 1);
    CHECK_EQ(r.offset, 16);
    munmap(base, pq_log_segment_size(1, CAP));
    return 0;
}

int main(void)
{
    RUN(test_live_writer_is_waited_for);
    RUN(test_dead_writer_is_passed);
    RUN(test_commit_leaves_a_newer_header_alone);
    return 0;
}
