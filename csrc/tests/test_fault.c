/*
 * test_fault.c - the fault-injection primitive (pq_fault.h) and, with it,
 * a process SIGKILLed at every fault point of the core. Built against a
 * copy of the core compiled with -DPQ_FAULT_INJECTION (see the Makefile).
 *
 * A child arms a point through PYQUEUE_FAULT (set after fork: the child
 * reads it afresh), runs into it and stops itself with SIGSTOP; the parent
 * sees it stopped (waitpid WUNTRACED), looks at the ring, and SIGKILLs it
 * there (or lets it go on with SIGCONT). Then the ring must still work and
 * its counts must be right.
 */
#include "pq_test.h"

#include "../pq_dlog.h"
#include "../pq_fault.h"
#include "../pq_ring.h"
#include "../pq_topic.h"

#ifndef PQ_FAULT_INJECTION
#error "test_fault is built with -DPQ_FAULT_INJECTION"
#endif

#define CAP 4096u
#define LEN 64u

typedef struct fixture {
    uint8_t *base;
    size_t size;
    pq_ring r;
} fixture;

static int fixture_open(fixture *f, uint64_t maxsize)
{
    f->size = pq_ring_segment_size(CAP);
    f->base = pq_test_shared(f->size);
    CHECK(f->base != NULL);
    CHECK_EQ(pq_ring_create(f->base, f->size, CAP, maxsize, NULL, 0), 0);
    CHECK_EQ(pq_ring_open(&f->r, f->base, f->size), 0);
    return 0;
}

static void fixture_close(fixture *f)
{
    munmap(f->base, f->size);
}

/* A put as the binding does it: claim, copy (split around mid_copy),
 * commit, notify. The payload is LEN bytes of `byte`, type `byte`. */
static int put(pq_ring *r, uint8_t byte)
{
    uint8_t src[LEN];
    uint32_t len = LEN;
    uint64_t pos;
    memset(src, byte, sizeof src);
    int rc = pq_ring_claim(r, &len, 1, &pos);
    if (rc < 0)
        return rc;
    pq_fault_copy(pq_ring_payload(r, pos), 0, src, LEN, LEN);
    pq_ring_commit(r, pos, byte);
    pq_ring_notify_readable(r, 1);
    return 0;
}

/* A get as the binding does it (take, then hand over: taken_done),
 * repairing a dead producer's record at head. The type of the message
 * taken, -EAGAIN when empty, -EBADMSG on a torn payload, or another
 * negative code. */
static int get(pq_ring *r, int *repairs)
{
    pq_ring_record rec;
    pq_ring_batch b;
    for (int round = 0; round < 1000; round++) {
        int rc = pq_ring_peek(r, &rec, 1, &b);
        if (rc > 0) {
            for (uint32_t i = 0; i < rec.len; i++)
                if (rec.payload[i] != rec.type)
                    return -EBADMSG;
            int type = rec.type;
            if (pq_ring_take(r, &b) == 0) {
                pq_ring_taken_done(r);
                return type;
            }
            continue;
        }
        if (rc == 0) {
            pq_ring_consume(r, &b);
            continue;
        }
        if (rc == -EINPROGRESS) {
            rc = pq_ring_repair_head(r);
            if (rc < 0)
                return rc;
            if (rc == 0)
                return -EINPROGRESS; /* a live producer: not ours */
            if (repairs)
                (*repairs)++;
            continue;
        }
        if (rc != -ESTALE)
            return rc;
    }
    return -ELOOP;
}

/* fork a child that arms `spec`; the child runs the rest of the caller's
 * branch. */
static pid_t fork_armed(const char *spec)
{
    pid_t pid = fork();
    if (pid == 0)
        CHILD_CHECK(setenv("PYQUEUE_FAULT", spec, 1) == 0);
    return pid;
}

/* 0 once the child is stopped; -1 when it exited or did not stop in time. */
static int wait_stopped(pid_t pid)
{
    int64_t deadline = pq_test_now_ns() + 10000000000LL;
    int status;
    while (pq_test_now_ns() < deadline) {
        pid_t r = waitpid(pid, &status, WUNTRACED | WNOHANG);
        if (r == pid)
            return WIFSTOPPED(status) && WSTOPSIG(status) == SIGSTOP ? 0 : -1;
        if (r < 0 && errno != EINTR)
            return -1;
        pq_test_sleep_ms(1);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

static int kill_stopped(pid_t pid)
{
    CHECK_EQ(kill(pid, SIGKILL), 0);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 128 + SIGKILL);
    return 0;
}

static int test_parse(void)
{
    int point = -1;
    uint64_t nth = 0;
    for (int id = 1; id < PQ_FAULT_NPOINTS; id++) {
        const char *name = pq_fault_name(id);
        CHECK(name != NULL);
        CHECK_EQ(pq_fault_parse(name, &point, &nth), 0);
        CHECK_EQ(point, id);
        CHECK_EQ(nth, 1);
    }
    CHECK_EQ(pq_fault_parse("mid_copy:17", &point, &nth), 0);
    CHECK_EQ(point, PQ_FAULT_MID_COPY);
    CHECK_EQ(nth, 17);
    const char *bad[] = {"", "none", "bogus", "after_claimx", "after_clai", "after_claim:",
                         "after_claim:0", "after_claim:x", "after_claim:3x", "after_claim:-1",
                         "after_claim: 2", ":3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_EQ(pq_fault_parse(bad[i], &point, &nth), -EINVAL);
    CHECK_EQ(pq_fault_parse(NULL, &point, &nth), -EINVAL);
    CHECK(pq_fault_name(0) != NULL);
    CHECK(pq_fault_name(PQ_FAULT_NPOINTS) == NULL);
    CHECK(pq_fault_name(-1) == NULL);
    return 0;
}

/* Disarmed (unset, or a spec naming no point): nothing stops. */
static int test_disarmed(void)
{
    fixture f;
    if (fixture_open(&f, 0))
        return 1;
    const char *specs[] = {NULL, "bogus", "after_claim:0"};
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            if (specs[i])
                setenv("PYQUEUE_FAULT", specs[i], 1);
            else
                unsetenv("PYQUEUE_FAULT");
            for (int k = 0; k < 3; k++)
                CHILD_CHECK(put(&f.r, 0x11) == 0);
            for (int k = 0; k < 3; k++)
                CHILD_CHECK(get(&f.r, NULL) == 0x11);
            _exit(0);
        }
        CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    }
    fixture_close(&f);
    return 0;
}

/* after_claim:3 stops at the third claim, not before; SIGCONT goes on. */
static int test_nth_hit_and_resume(void)
{
    fixture f;
    if (fixture_open(&f, 0))
        return 1;
    pid_t pid = fork_armed("after_claim:3");
    if (pid == 0) {
        for (int k = 1; k <= 5; k++)
            CHILD_CHECK(put(&f.r, (uint8_t)k) == 0);
        _exit(0);
    }
    CHECK(pid > 0);
    CHECK_EQ(wait_stopped(pid), 0);
    /* Two committed, the third claimed (counted) and not written. */
    CHECK_EQ(pq_ring_depth(&f.r), 3);
    CHECK_EQ(get(&f.r, NULL), 1);
    CHECK_EQ(get(&f.r, NULL), 2);
    CHECK_EQ(get(&f.r, NULL), -EINPROGRESS); /* stopped is alive: no repair */
    CHECK_EQ(kill(pid, SIGCONT), 0);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    for (int k = 3; k <= 5; k++)
        CHECK_EQ(get(&f.r, NULL), k);
    CHECK_EQ(get(&f.r, NULL), -EAGAIN);
    fixture_close(&f);
    return 0;
}

/*
 * A producer killed at each of its points: what was put before and after
 * arrives, the half-written message never does, it is counted abandoned
 * when it had been published, and the counts add up.
 */
static int producer_point(const char *spec, int published)
{
    fixture f;
    int repairs = 0;
    if (fixture_open(&f, 0))
        return 1;
    CHECK_EQ(put(&f.r, 0xA1), 0);
    pid_t pid = fork_armed(spec);
    if (pid == 0) {
        put(&f.r, 0xB2);
        _exit(0);
    }
    CHECK(pid > 0);
    CHECK_EQ(wait_stopped(pid), 0);
    if (strcmp(spec, "mid_copy") == 0) {
        /* Exactly the first half is in place. */
        const uint8_t *p = pq_ring_payload(&f.r, pq_ring_record_size(LEN));
        for (uint32_t i = 0; i < LEN; i++)
            CHECK_EQ(p[i], i < LEN / 2 ? 0xB2 : 0);
    }
    CHECK_EQ(kill_stopped(pid), 0);
    CHECK_EQ(put(&f.r, 0xC3), 0); /* (in_claim_lock: EOWNERDEAD recovery) */
    CHECK_EQ(get(&f.r, &repairs), 0xA1);
    CHECK_EQ(get(&f.r, &repairs), 0xC3);
    CHECK_EQ(get(&f.r, &repairs), -EAGAIN);
    CHECK_EQ(repairs, published);
    pq_ring_stats st;
    pq_ring_get_stats(&f.r, &st);
    CHECK_EQ(st.abandoned, published);
    CHECK_EQ(st.depth, 0);
    CHECK_EQ(st.enqueued, 2);
    CHECK_EQ(st.dequeued, 2);
    fixture_close(&f);
    return 0;
}

static int test_producer_after_claim(void) { return producer_point("after_claim", 1); }
static int test_producer_mid_copy(void) { return producer_point("mid_copy", 1); }
static int test_producer_before_commit(void) { return producer_point("before_commit", 1); }
static int test_producer_in_claim_lock(void) { return producer_point("in_claim_lock", 0); }

/*
 * A consumer killed before its CAS took nothing; killed right after it,
 * it took the message, and the count went with it: the depth is right and
 * a maxsize=1 queue is not left "full" (the double-width CAS); and the
 * message it died with is counted as abandoned (its process slot), once.
 */
static int consumer_point(const char *spec, int taken)
{
    fixture f;
    uint32_t len = LEN;
    uint64_t pos;
    if (fixture_open(&f, 1))
        return 1;
    CHECK_EQ(put(&f.r, 0xA1), 0);
    CHECK_EQ(pq_ring_claim(&f.r, &len, 1, &pos), -EAGAIN); /* maxsize */
    pid_t pid = fork_armed(spec);
    if (pid == 0) {
        get(&f.r, NULL);
        _exit(0);
    }
    CHECK(pid > 0);
    CHECK_EQ(wait_stopped(pid), 0);
    CHECK_EQ(kill_stopped(pid), 0);
    CHECK_EQ(pq_ring_depth(&f.r), taken ? 0 : 1);
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), taken);
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 0);
    if (!taken)
        CHECK_EQ(get(&f.r, NULL), 0xA1);
    CHECK_EQ(get(&f.r, NULL), -EAGAIN);
    CHECK_EQ(pq_ring_depth(&f.r), 0);
    CHECK_EQ(put(&f.r, 0xC3), 0);
    CHECK_EQ(get(&f.r, NULL), 0xC3);
    pq_ring_stats st;
    pq_ring_get_stats(&f.r, &st);
    CHECK_EQ(st.depth, 0);
    CHECK_EQ(st.enqueued, 2);
    CHECK_EQ(st.dequeued, 2 - taken);
    CHECK_EQ(st.abandoned, taken);
    CHECK_EQ(st.abandoned_taken, taken);
    fixture_close(&f);
    return 0;
}

static int test_consumer_after_peek(void) { return consumer_point("after_peek", 0); }
static int test_consumer_after_consume(void) { return consumer_point("after_consume", 1); }

/* Killed parked (readable and writable): the waiter count stays one high,
 * and that is harmless. */
static int test_parked(void)
{
    for (int side = 0; side < 2; side++) {
        fixture f;
        if (fixture_open(&f, 1))
            return 1;
        pq_event *ev = side == 0 ? &f.r.ctl->readable : &f.r.ctl->writable;
        if (side == 1)
            CHECK_EQ(put(&f.r, 0xA1), 0); /* full: maxsize 1 */
        pid_t pid = fork_armed("parked");
        if (pid == 0) {
            int64_t deadline = pq_monotonic_ns() + 5000000000LL;
            if (side == 0)
                pq_ring_wait_readable(&f.r, deadline, 0);
            else
                pq_ring_wait_writable(&f.r, pq_ring_head(&f.r), deadline, 0);
            _exit(0);
        }
        CHECK(pid > 0);
        CHECK_EQ(wait_stopped(pid), 0);
        CHECK_EQ(pq_event_waiters(ev), 1);
        CHECK_EQ(kill_stopped(pid), 0);
        CHECK_EQ(pq_event_waiters(ev), 1);
        if (side == 0)
            CHECK_EQ(put(&f.r, 0xA1), 0);
        CHECK_EQ(get(&f.r, NULL), 0xA1);
        /* Waits still wait and still time out. */
        int64_t t0 = pq_monotonic_ns();
        CHECK_EQ(pq_ring_wait_readable(&f.r, t0 + 20000000, 0), -ETIMEDOUT);
        CHECK(pq_monotonic_ns() - t0 >= 20000000);
        /* A live waiter is still woken by a put. */
        uint32_t before = pq_event_waiters(&f.r.ctl->readable);
        pid_t waiter = fork();
        if (waiter == 0) {
            unsetenv("PYQUEUE_FAULT");
            int64_t deadline = pq_monotonic_ns() + 5000000000LL;
            int rc;
            while ((rc = get(&f.r, NULL)) == -EAGAIN)
                CHILD_CHECK(pq_ring_wait_readable(&f.r, deadline, 0) == 0);
            _exit(rc == 0xD4 ? 0 : 1);
        }
        CHECK(waiter > 0);
        int64_t until = pq_monotonic_ns() + 5000000000LL;
        while (pq_event_waiters(&f.r.ctl->readable) == before && pq_monotonic_ns() < until)
            pq_test_sleep_ms(1);
        CHECK_EQ(put(&f.r, 0xD4), 0);
        CHECK_EQ(pq_test_wait_child(waiter, 10000), 0);
        fixture_close(&f);
    }
    return 0;
}

/* ---- directory-mode rolls (pq_dlog_roll) ------------------------------ */

#define DSEGB 8192u

/* A control file and a segment "file" in shared anonymous memory. */
static int dlog_make(pq_dlog *d, pq_dseg *s, uint64_t base_offset)
{
    size_t size = pq_dlog_control_size(1, 4);
    void *base = pq_test_shared(size);
    CHECK(base != NULL);
    CHECK_EQ(pq_dlog_create(base, size, 1, DSEGB, 4), 0);
    CHECK_EQ(pq_dlog_open(d, base, size), 0);
    uint64_t ixs = pq_dseg_index_file_size(DSEGB);
    s->data = pq_test_shared(DSEGB);
    s->ix = pq_test_shared(ixs);
    CHECK(s->data != NULL && s->ix != NULL);
    s->data_size = DSEGB;
    s->base_offset = base_offset;
    s->ix_cap = (ixs - sizeof(pq_dseg_index_header)) / sizeof(pq_dseg_index_entry);
    CHECK_EQ(pq_dseg_index_init(s->ix, ixs, base_offset), 0);
    CHECK_EQ(pq_dlog_set_allocated(d, 0, DSEGB), 0);
    return 0;
}

static int dlog_append(pq_dlog *d, pq_dseg *s, uint64_t *off)
{
    static uint8_t buf[100];
    pq_log_entry e = {.value = buf, .value_len = sizeof buf, .type = 1};
    uint64_t need;
    int rc = pq_dlog_lock(d, 0);
    if (rc < 0)
        return rc;
    rc = pq_dlog_append(d, 0, s, &e, 1, 5, off, &need);
    pq_dlog_unlock(d, 0);
    return rc;
}

/*
 * A roller SIGKILLed at roll_begin (the next segment's files made, the
 * control untouched) changed nothing: the old segment stays active and
 * takes appends. Killed at mid_roll (seqlock odd, holding the lock), the
 * next holder finishes its roll: the new segment is active, at the old
 * end offset, and no reader is left spinning.
 */
static int roll_point(const char *spec, int finished)
{
    pq_dlog d;
    pq_dseg s;
    uint64_t off;
    if (dlog_make(&d, &s, 0))
        return 1;
    for (int i = 0; i < 3; i++)
        CHECK_EQ(dlog_append(&d, &s, &off), 1);
    pid_t pid = fork_armed(spec);
    if (pid == 0) {
        uint64_t nb;
        CHILD_CHECK(pq_dlog_lock(&d, 0) == 0);
        pq_dlog_roll(&d, 0, &s, &nb);
        _exit(0);
    }
    CHECK(pid > 0);
    CHECK_EQ(wait_stopped(pid), 0);
    CHECK_EQ(kill_stopped(pid), 0);
    pq_dlog_view v;
    CHECK_EQ(pq_dlog_snapshot(&d, 0, &v), 0); /* (takes the dead one's lock) */
    CHECK_EQ(v.end_offset, 3);
    CHECK_EQ(atomic_load(&d.parts[0].seq) & 1, 0);
    if (finished) {
        CHECK_EQ(v.active_base, 3);
        CHECK_EQ(v.end_pos, 0);
        CHECK_EQ(dlog_append(&d, &s, &off), -ESTALE);
    } else {
        CHECK_EQ(v.active_base, 0);
        CHECK_EQ(dlog_append(&d, &s, &off), 1);
        CHECK_EQ(off, 3);
        pq_dseg_index_header h;
        CHECK_EQ(pq_dseg_index_read(s.ix, pq_dseg_index_file_size(DSEGB), 0, &h), -ENODATA);
    }
    return 0;
}

static int test_roller_roll_begin(void) { return roll_point("roll_begin", 0); }
static int test_roller_mid_roll(void) { return roll_point("mid_roll", 1); }

/* --- topic ------------------------------------------------------------ */

/* A full lossy topic of 51 records of 64 bytes (80 in the ring), values
 * 0..50; those for which oob(v) is set are out of band. */
static void *topic_full(pq_topic *t, size_t *size, int first_oob)
{
    *size = pq_topic_segment_size(CAP);
    void *base = pq_test_shared(*size);
    if (base == NULL || pq_topic_create(base, *size, CAP, PQ_TOPIC_LOSSY, NULL, 0) != 0 ||
        pq_topic_open(t, base, *size) != 0)
        return NULL;
    for (uint64_t v = 0; v < 51; v++) {
        uint32_t len = LEN;
        uint64_t pos, needed;
        if (pq_topic_claim(t, &len, 1, &pos, &needed) != 0)
            return NULL;
        memset(pq_topic_payload(t, pos), 0, LEN);
        memcpy(pq_topic_payload(t, pos), &v, sizeof v);
        pq_topic_commit(t, pos, (v == 0 && first_oob) ? (PQ_TOPIC_TYPE_OOB | 1u) : 1u);
    }
    return base;
}

/* Claim one 64-byte record reporting what it passes (as the binding: a
 * reported reclaim is unlinked, then claimed again); commit it. */
static int topic_put(pq_topic *t, pq_topic_refs *refs)
{
    uint32_t len = LEN;
    uint64_t pos, needed;
    int rc, turns = 0;
    while ((rc = pq_topic_claim_refs(t, &len, 1, &pos, &needed, refs)) == -ENOBUFS &&
           ++turns < 100)
        ;
    if (rc != 0)
        return rc;
    memset(pq_topic_payload(t, pos), 0, LEN);
    pq_topic_commit(t, pos, 1);
    return 0;
}

/* A publisher killed with a head move announced (head_move_announced),
 * or between its head_msgs and head stores (mid_head_move): the next lock
 * holder completes the move, so the retained count still matches what a
 * subscriber from the start reads. */
static int topic_head_move_point(const char *spec, uint64_t msgs_at_stop)
{
    pq_topic t;
    size_t size;
    void *base = topic_full(&t, &size, 0);
    CHECK(base != NULL);
    pid_t pid = fork_armed(spec);
    if (pid == 0) {
        CHILD_CHECK(topic_put(&t, NULL) == 0);
        _exit(0);
    }
    CHECK(pid > 0);
    CHECK_EQ(wait_stopped(pid), 0);
    CHECK_EQ(t.ctl->head_msgs, msgs_at_stop);
    CHECK_EQ(t.ctl->head, 0u);
    CHECK_EQ(kill_stopped(pid), 0);
    CHECK_EQ(topic_put(&t, NULL), 0); /* EOWNERDEAD: the move completed */
    pq_topic_stats st;
    pq_topic_get_stats(&t, &st);
    pq_topic_sub s;
    CHECK_EQ(pq_topic_subscribe(&t, &s, PQ_TOPIC_START_EARLIEST), 0);
    pq_topic_record rec[64];
    pq_topic_batch b;
    uint64_t read = 0;
    for (int i = 0; i < 100; i++) {
        int rc = pq_topic_peek(&t, &s, rec, 64, &b);
        if (rc < 0)
            break;
        if (pq_topic_advance(&t, &s, &b) == 0)
            read += (uint64_t)rc;
    }
    CHECK_EQ(st.retained, read);
    CHECK_EQ(st.published, 52u); /* the dead claim's count undone */
    CHECK_EQ(t.ctl->head, 80u);    /* its move completed (this claim had room then) */
    munmap(base, size);
    return 0;
}

static int test_topic_head_move_announced(void) { return topic_head_move_point("head_move_announced", 0); }
static int test_topic_mid_head_move(void) { return topic_head_move_point("mid_head_move", 1); }

/* A publisher killed once its claim reported an out-of-band record it
 * passed, before it unlinked the segment: the next publisher is given the
 * same reference to unlink (not lost with the dead one). */
static int test_topic_reclaim_reported(void)
{
    pq_topic t;
    size_t size;
    void *base = topic_full(&t, &size, 1);
    CHECK(base != NULL);
    pid_t pid = fork_armed("reclaim_reported");
    if (pid == 0) {
        pq_topic_ref items[4];
        pq_topic_refs refs = {items, 4, 0, 0};
        topic_put(&t, &refs);
        _exit(0);
    }
    CHECK(pid > 0);
    CHECK_EQ(wait_stopped(pid), 0);
    CHECK_EQ(kill_stopped(pid), 0);
    pq_topic_ref items[4];
    pq_topic_refs refs = {items, 4, 0, 0};
    CHECK_EQ(topic_put(&t, &refs), 0);
    CHECK_EQ(refs.count, 1u);
    uint64_t v;
    memcpy(&v, items[0].bytes, sizeof v);
    CHECK_EQ(v, 0u); /* record 0's reference: the one the dead claim passed */
    CHECK_EQ(refs.reclaim, 0u);
    munmap(base, size);
    return 0;
}

/* Resident pages of level `level`'s region. */
static size_t level_resident(const pq_ring *r, unsigned level)
{
    return pq_test_resident(r->data + pq_ring_level_offset(r->capacity, level),
                            (size_t)(r->capacity << level));
}

/* put() for a ring whose grown level is backed on demand (-ENOBUFS). */
static int put_backing(pq_ring *r, uint8_t byte)
{
    for (;;) {
        int rc = put(r, byte);
        if (rc != -ENOBUFS)
            return rc;
        rc = pq_ring_reserve(r, r->reserve_need);
        if (rc < 0)
            return rc;
    }
}

#define GROWN_SIZE (PQ_RING_DATA_OFFSET + 3 * CAP) /* levels 0 and 1 */

/* A ring of two levels in fresh shared memory, views p and c open on it,
 * grown into level 1 by p's puts (of type 1). NULL on failure. */
static uint8_t *grown_ring(pq_ring *p, pq_ring *c)
{
    uint8_t *base = pq_test_shared(GROWN_SIZE);
    if (base == NULL || pq_ring_create(base, GROWN_SIZE, CAP, 0, NULL, 0) != 0 ||
        pq_ring_open(p, base, GROWN_SIZE) != 0 || pq_ring_open(c, base, GROWN_SIZE) != 0)
        return NULL;
    while (p->ep_level != 1)
        if (put_backing(p, 1) != 0)
            return NULL;
    return base;
}

/* Puts and gets in level 0 until level 1's pages are given back: each
 * take that empties the queue while a level >= 1 is marked asks for a
 * trim (the first put also takes the claim lock: the recovery of a dead
 * holder). At most three rounds; then no page and no mark is left. */
static int given_back(pq_ring *p, pq_ring *c)
{
    c->trim_wanted = 0;
    for (int i = 0; i < 3 && level_resident(p, 1) != 0; i++) {
        CHECK_EQ(put_backing(p, 2), 0);
        CHECK_EQ(get(c, NULL), 2);
        CHECK_EQ(c->trim_wanted, 1);
        c->trim_wanted = 0;
        CHECK(pq_ring_trim(c) >= 0);
    }
    CHECK_EQ(level_resident(p, 1), 0u);
    CHECK_EQ(atomic_load_explicit(&p->ctl->dirty_levels, memory_order_relaxed), 0u);
    return 0;
}

/*
 * A trim stopped right after it emptied a dead level's region; then a
 * late producer, whose populate of its old epoch's chunk in that level
 * ran on past the emptying, marks the level (pq_ring_reserve). The mark
 * must survive the trim, and the next take that empties the queue asks
 * for a trim that gives the pages back. (The trim used to clear the mark
 * after emptying the region, losing one made in between: the pages stayed
 * backed - tests/test_shm_full.py saw up to a chunk.)
 */
static int test_trim_keeps_a_late_mark(void)
{
    pq_ring p, c;
    uint8_t *base = grown_ring(&p, &c);
    CHECK(base != NULL);
    while (pq_ring_depth(&c) > 0)
        CHECK_EQ(get(&c, NULL), 1);
    CHECK_EQ(c.trim_wanted, 1);
    CHECK(level_resident(&p, 1) > 0);
    pid_t pid = fork_armed("trim_emptied");
    if (pid == 0) {
        CHILD_CHECK(pq_ring_trim(&c) == 1);
        _exit(0);
    }
    CHECK(pid > 0);
    CHECK_EQ(wait_stopped(pid), 0);
    CHECK_EQ(level_resident(&p, 1), 0u);
    /* The late producer's pages, and its mark after them. */
    memset(p.data + pq_ring_level_offset(p.capacity, 1), 0xab, 16);
    atomic_fetch_or_explicit(&p.ctl->dirty_levels, 1ull << 1, memory_order_acq_rel);
    CHECK_EQ(kill(pid, SIGCONT), 0);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK((atomic_load_explicit(&p.ctl->dirty_levels, memory_order_relaxed) & 2u) != 0);
    CHECK_EQ(level_resident(&p, 1), 1u);
    CHECK_EQ(given_back(&p, &c), 0);
    munmap(base, GROWN_SIZE);
    return 0;
}

/* A trim killed between clearing a dead level's mark and emptying its
 * region: the next holder of the claim lock (told the holder died) marks
 * every level, and the region is emptied by a later trim, not left. */
static int test_trim_killed_after_clearing(void)
{
    pq_ring p, c;
    uint8_t *base = grown_ring(&p, &c);
    CHECK(base != NULL);
    while (pq_ring_depth(&c) > 0)
        CHECK_EQ(get(&c, NULL), 1);
    const size_t before = level_resident(&p, 1);
    CHECK(before > 0);
    pid_t pid = fork_armed("trim_cleared");
    if (pid == 0) {
        pq_ring_trim(&c);
        _exit(0);
    }
    CHECK(pid > 0);
    CHECK_EQ(wait_stopped(pid), 0);
    CHECK_EQ(kill_stopped(pid), 0);
    CHECK_EQ(atomic_load_explicit(&p.ctl->dirty_levels, memory_order_relaxed) & 2u, 0u);
    CHECK_EQ(level_resident(&p, 1), before);
    CHECK_EQ(given_back(&p, &c), 0);
    munmap(base, GROWN_SIZE);
    return 0;
}

/* A peek that loaded head, then stopped while another consumer drained
 * the queue and a trim emptied level 1: it reads a hole there (a page for
 * it), finds head moved (-ESTALE), and marks the level; the next take
 * that empties the queue asks for a trim that gives the page back. */
static int test_stale_peek_marks_its_level(void)
{
    pq_ring p, c1, c2;
    uint8_t *base = grown_ring(&p, &c1);
    CHECK(base != NULL);
    CHECK_EQ(pq_ring_open(&c2, base, GROWN_SIZE), 0);
    CHECK_EQ(put_backing(&p, 1), 0);
    while (c2.rd_level != 1) /* read level 0: level 1's records at head */
        CHECK_EQ(get(&c2, NULL), 1);
    pid_t pid = fork_armed("peek_loaded_head");
    if (pid == 0) {
        pq_ring_record rec;
        pq_ring_batch b;
        CHILD_CHECK(pq_ring_peek(&c1, &rec, 1, &b) == -ESTALE);
        _exit(0);
    }
    CHECK(pid > 0);
    CHECK_EQ(wait_stopped(pid), 0);
    while (pq_ring_depth(&c2) > 0)
        CHECK_EQ(get(&c2, NULL), 1);
    CHECK_EQ(c2.trim_wanted, 1);
    c2.trim_wanted = 0;
    CHECK_EQ(pq_ring_trim(&c2), 1);
    CHECK_EQ(level_resident(&p, 1), 0u);
    CHECK_EQ(kill(pid, SIGCONT), 0);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK_EQ(level_resident(&p, 1), 1u); /* the stale read's page */
    CHECK((atomic_load_explicit(&p.ctl->dirty_levels, memory_order_relaxed) & 2u) != 0);
    CHECK_EQ(put_backing(&p, 2), 0);
    CHECK_EQ(get(&c2, NULL), 2);
    CHECK_EQ(c2.trim_wanted, 1);
    CHECK_EQ(pq_ring_trim(&c2), 1);
    CHECK_EQ(level_resident(&p, 1), 0u);
    munmap(base, GROWN_SIZE);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsetenv("PYQUEUE_FAULT");
    printf("test_fault\n");
    RUN(test_parse);
    RUN(test_disarmed);
    RUN(test_nth_hit_and_resume);
    RUN(test_producer_after_claim);
    RUN(test_producer_mid_copy);
    RUN(test_producer_before_commit);
    RUN(test_producer_in_claim_lock);
    RUN(test_consumer_after_peek);
    RUN(test_consumer_after_consume);
    RUN(test_parked);
    RUN(test_roller_roll_begin);
    RUN(test_roller_mid_roll);
    RUN(test_topic_head_move_announced);
    RUN(test_topic_mid_head_move);
    RUN(test_topic_reclaim_reported);
    RUN(test_trim_keeps_a_late_mark);
    RUN(test_trim_killed_after_clearing);
    RUN(test_stale_peek_marks_its_level);
    return pq_test_result();
}
