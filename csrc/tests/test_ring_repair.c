/*
 * test_ring_repair.c - producers that die: a record claimed and never
 * committed (the child _exits, is SIGKILLed, or is a zombie) blocks the
 * head until pq_ring_repair_head marks it abandoned; a live (even
 * stopped) producer's record is left alone; and a producer that dies
 * holding the claim lock does not deadlock the next claim (robust mutex),
 * nor leave the message count wrong.
 */
#include "pq_test.h"

#include "../pq_proc.h"
#include "../pq_ring.h"

typedef struct fixture {
    uint8_t *base;
    size_t size;
    pq_ring r;
} fixture;

static int fixture_open(fixture *f, uint64_t cap, uint64_t maxsize)
{
    f->size = pq_ring_segment_size(cap);
    f->base = pq_test_shared(f->size);
    CHECK(f->base != NULL);
    CHECK_EQ(pq_ring_create(f->base, f->size, cap, maxsize, NULL, 0), 0);
    CHECK_EQ(pq_ring_open(&f->r, f->base, f->size), 0);
    return 0;
}

static void fixture_close(fixture *f)
{
    munmap(f->base, f->size);
}

static int put(pq_ring *r, uint32_t len, uint8_t byte)
{
    uint64_t pos;
    int rc = pq_ring_claim(r, &len, 1, &pos);
    if (rc < 0)
        return rc;
    memset(pq_ring_payload(r, pos), byte, len);
    pq_ring_commit(r, pos, byte);
    pq_ring_notify_readable(r, 1);
    return 0;
}

/*
 * What a consumer does: peek; pass padding/abandoned records; on a head
 * in progress, try a repair. Returns the first committed record's byte
 * (its type) or a negative code; *repairs counts successful repairs.
 */
static int get_repairing(pq_ring *r, int *repairs, int max_rounds)
{
    pq_ring_record rec;
    pq_ring_batch b;
    for (int round = 0; round < max_rounds; round++) {
        int rc = pq_ring_peek(r, &rec, 1, &b);
        if (rc > 0) {
            int type = rec.type;
            for (uint32_t i = 0; i < rec.len; i++)
                if (rec.payload[i] != (uint8_t)type)
                    return -EBADMSG;
            if (pq_ring_consume(r, &b) != 0)
                continue;
            return type;
        }
        if (rc == 0) {
            pq_ring_consume(r, &b);
            continue;
        }
        if (rc == -EINPROGRESS) {
            int rr = pq_ring_repair_head(r);
            if (rr < 0)
                return rr;
            if (rr == 1)
                (*repairs)++;
            else
                return -EINPROGRESS; /* alive: not ours to repair */
            continue;
        }
        return rc;
    }
    return -ELOOP;
}

/* A child that claims n records (lens[i]) and then dies as told:
 * 0 = _exit, 1 = SIGKILLed by the parent, 2 = stays a zombie. */
static int dead_claimer(fixture *f, const uint32_t *lens, uint32_t n, int how, pid_t *pid_out)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        uint64_t pos[8];
        pq_ring r;
        close(fds[0]);
        CHILD_CHECK(pq_ring_open(&r, f->base, f->size) == 0);
        CHILD_CHECK(pq_ring_claim(&r, lens, n, pos) == 0);
        for (uint32_t i = 0; i < n; i++)
            memset(pq_ring_payload(&r, pos[i]), 0xEE, lens[i] / 2); /* half written */
        CHILD_CHECK(write(fds[1], "c", 1) == 1);
        if (how == 1)
            for (;;)
                pause();
        _exit(0);
    }
    close(fds[1]);
    char c;
    CHECK(read(fds[0], &c, 1) == 1);
    close(fds[0]);
    if (how == 1) {
        CHECK(kill(pid, SIGKILL) == 0);
        CHECK_EQ(pq_test_wait_child(pid, 5000), 128 + SIGKILL);
    } else if (how == 2) {
        siginfo_t info;
        CHECK(waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT) == 0);
    } else {
        CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    }
    *pid_out = pid;
    return 0;
}

static int abandoned_then_delivered(int how)
{
    fixture f;
    pq_ring_record rec;
    pq_ring_batch b;
    pq_ring_stats st;
    pid_t pid;
    uint32_t len = 100;
    if (fixture_open(&f, 4096, 0))
        return 1;
    CHECK_EQ(put(&f.r, 30, 1), 0); /* one before, delivered as usual */
    if (dead_claimer(&f, &len, 1, how, &pid))
        return 1;
    CHECK_EQ(put(&f.r, 40, 2), 0);
    CHECK_EQ(put(&f.r, 50, 3), 0);

    CHECK_EQ(pq_ring_peek(&f.r, &rec, 1, &b), 1);
    CHECK_EQ(pq_ring_consume(&f.r, &b), 0);
    /* Now the dead record is at head. */
    CHECK_EQ(pq_ring_peek(&f.r, &rec, 4, &b), -EINPROGRESS);
    CHECK_EQ(pq_ring_repair_head(&f.r), 1);
    CHECK_EQ(pq_ring_repair_head(&f.r), 0); /* nothing left to repair */
    pq_ring_record recs[4];
    CHECK_EQ(pq_ring_peek(&f.r, recs, 4, &b), 2);
    CHECK_EQ(b.skipped, 1);
    CHECK_EQ(recs[0].type, 2);
    CHECK_EQ(recs[0].len, 40);
    CHECK_EQ(recs[1].type, 3);
    CHECK_EQ(pq_ring_consume(&f.r, &b), 0);
    CHECK_EQ(pq_ring_peek(&f.r, recs, 4, &b), -EAGAIN);

    pq_ring_get_stats(&f.r, &st);
    CHECK_EQ(st.abandoned, 1);
    CHECK_EQ(st.enqueued, 3);
    CHECK_EQ(st.dequeued, 3);
    CHECK_EQ(st.depth, 0);
    CHECK_EQ(st.depth_bytes, 0);
    if (how == 2)
        CHECK_EQ(pq_test_wait_child(pid, 5000), 0); /* reap the zombie */
    fixture_close(&f);
    return 0;
}

static int test_exit_without_commit(void) { return abandoned_then_delivered(0); }
static int test_sigkill_after_claim(void) { return abandoned_then_delivered(1); }
static int test_zombie_claimer(void) { return abandoned_then_delivered(2); }

/* Between the repair and the pass, the statistics stay sane. */
static int test_stats_between_repair_and_pass(void)
{
    fixture f;
    pq_ring_stats st;
    pid_t pid;
    uint32_t len = 10;
    if (fixture_open(&f, 4096, 0))
        return 1;
    if (dead_claimer(&f, &len, 1, 0, &pid))
        return 1;
    CHECK_EQ(pq_ring_repair_head(&f.r), 1);
    pq_ring_get_stats(&f.r, &st);
    CHECK(st.dequeued == 0 && st.enqueued <= 1 && st.depth == 1);
    int repairs = 0;
    CHECK_EQ(get_repairing(&f.r, &repairs, 10), -EAGAIN);
    pq_ring_get_stats(&f.r, &st);
    CHECK_EQ(st.abandoned, 1);
    CHECK_EQ(st.enqueued, 0);
    CHECK_EQ(st.dequeued, 0);
    CHECK_EQ(st.depth, 0);
    fixture_close(&f);
    return 0;
}

/* A dead producer's batch: every record of it is abandoned in turn. */
static int test_dead_batch(void)
{
    fixture f;
    pid_t pid;
    uint32_t lens[3] = {10, 200, 0};
    int repairs = 0;
    pq_ring_stats st;
    if (fixture_open(&f, 4096, 0))
        return 1;
    if (dead_claimer(&f, lens, 3, 1, &pid))
        return 1;
    CHECK_EQ(put(&f.r, 64, 7), 0);
    CHECK_EQ(get_repairing(&f.r, &repairs, 20), 7);
    CHECK_EQ(repairs, 3);
    pq_ring_get_stats(&f.r, &st);
    CHECK_EQ(st.abandoned, 3);
    CHECK_EQ(st.depth, 0);
    CHECK_EQ(st.dequeued, 1);
    fixture_close(&f);
    return 0;
}

/* The dead record sits after a padding record (it wrapped). */
static int test_dead_after_padding(void)
{
    fixture f;
    pid_t pid;
    uint32_t len = 1500;
    int repairs = 0;
    if (fixture_open(&f, 4096, 0))
        return 1;
    CHECK_EQ(put(&f.r, 1500, 1), 0);
    CHECK_EQ(put(&f.r, 1500, 2), 0);
    CHECK_EQ(get_repairing(&f.r, &repairs, 5), 1);
    CHECK_EQ(get_repairing(&f.r, &repairs, 5), 2);
    if (dead_claimer(&f, &len, 1, 0, &pid)) /* padding 3040..4096, then it */
        return 1;
    CHECK_EQ(put(&f.r, 100, 9), 0);
    CHECK_EQ(pq_ring_repair_head(&f.r), 0); /* head is the padding */
    CHECK_EQ(get_repairing(&f.r, &repairs, 10), 9);
    CHECK_EQ(repairs, 1);
    fixture_close(&f);
    return 0;
}

/* A live producer, slow or stopped, keeps its record. */
static int test_live_claimer_not_repaired(void)
{
    fixture f;
    int to_child[2], to_parent[2];
    pq_ring_record rec;
    pq_ring_batch b;
    if (fixture_open(&f, 4096, 0))
        return 1;
    CHECK(pipe(to_child) == 0 && pipe(to_parent) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_ring r;
        uint64_t pos;
        uint32_t len = 77;
        char c;
        CHILD_CHECK(pq_ring_open(&r, f.base, f.size) == 0);
        CHILD_CHECK(pq_ring_claim(&r, &len, 1, &pos) == 0);
        CHILD_CHECK(write(to_parent[1], "c", 1) == 1);
        CHILD_CHECK(read(to_child[0], &c, 1) == 1);
        memset(pq_ring_payload(&r, pos), 5, len);
        pq_ring_commit(&r, pos, 5);
        pq_ring_notify_readable(&r, 1);
        _exit(0);
    }
    char c;
    CHECK(read(to_parent[0], &c, 1) == 1);
    CHECK_EQ(put(&f.r, 10, 6), 0);
    CHECK_EQ(pq_ring_peek(&f.r, &rec, 1, &b), -EINPROGRESS);
    CHECK_EQ(pq_ring_repair_head(&f.r), 0);
    /* Stopped is not dead either. */
    CHECK(kill(pid, SIGSTOP) == 0);
    pq_test_sleep_ms(5);
    CHECK_EQ(pq_ring_repair_head(&f.r), 0);
    CHECK(kill(pid, SIGCONT) == 0);
    CHECK_EQ(pq_ring_peek(&f.r, &rec, 1, &b), -EINPROGRESS);
    CHECK(write(to_child[1], "g", 1) == 1);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    int repairs = 0;
    CHECK_EQ(get_repairing(&f.r, &repairs, 5), 5);
    CHECK_EQ(get_repairing(&f.r, &repairs, 5), 6);
    CHECK_EQ(repairs, 0);
    pq_ring_stats st;
    pq_ring_get_stats(&f.r, &st);
    CHECK_EQ(st.abandoned, 0);
    close(to_child[0]);
    close(to_child[1]);
    close(to_parent[0]);
    close(to_parent[1]);
    fixture_close(&f);
    return 0;
}

/* The owner word names a live pid whose start time is another's: the pid
 * was reused, the owner is gone. */
static int test_reused_pid_is_dead(void)
{
    fixture f;
    uint64_t pos;
    uint32_t len = 20;
    int fds[2];
    if (fixture_open(&f, 4096, 0))
        return 1;
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char c;
        close(fds[1]);
        while (read(fds[0], &c, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    close(fds[0]);
    uint64_t st;
    CHECK_EQ(pq_proc_start_time(pid, &st), 0);
    CHECK_EQ(pq_ring_claim(&f.r, &len, 1, &pos), 0);
    pq_record_header *h = (pq_record_header *)(f.r.data + (pos & f.r.mask));
    pq_proc_id other = {pid, st};
    atomic_store(&h->owner, pq_proc_pack(&other));
    CHECK_EQ(pq_ring_repair_head(&f.r), 0); /* the sleeper is alive */
    other.start_time = st + 1;
    atomic_store(&h->owner, pq_proc_pack(&other));
    CHECK_EQ(pq_ring_repair_head(&f.r), 1);
    close(fds[1]);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    fixture_close(&f);
    return 0;
}

/* Claim in a child under a time limit: a deadlock fails the test instead
 * of hanging it. Returns the child's status. */
static int claim_in_child(fixture *f, uint32_t len, int expect_rc)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        pq_ring r;
        uint64_t pos;
        CHILD_CHECK(pq_ring_open(&r, f->base, f->size) == 0);
        int rc = pq_ring_claim(&r, &len, 1, &pos);
        if (rc != expect_rc) {
            fprintf(stderr, "claim_in_child: rc %d, expected %d\n", rc, expect_rc);
            _exit(1);
        }
        if (rc == 0) {
            memset(pq_ring_payload(&r, pos), 4, len);
            pq_ring_commit(&r, pos, 4);
        }
        _exit(0);
    }
    return pq_test_wait_child(pid, 5000);
}

/* A child takes the claim lock itself and dies holding it (_exit, or
 * SIGKILL): the next claims go through (EOWNERDEAD, made consistent). */
static int test_dead_lock_holder(void)
{
    fixture f;
    if (fixture_open(&f, 4096, 0))
        return 1;
    for (int how = 0; how < 2; how++) {
        int fds[2];
        CHECK(pipe(fds) == 0);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            pq_ring r;
            close(fds[0]);
            CHILD_CHECK(pq_ring_open(&r, f.base, f.size) == 0);
            CHILD_CHECK(pthread_mutex_lock(&r.ctl->claim_lock) == 0);
            CHILD_CHECK(write(fds[1], "l", 1) == 1);
            if (how == 1)
                for (;;)
                    pause();
            _exit(0);
        }
        close(fds[1]);
        char c;
        CHECK(read(fds[0], &c, 1) == 1);
        close(fds[0]);
        if (how == 1) {
            CHECK(kill(pid, SIGKILL) == 0);
            CHECK_EQ(pq_test_wait_child(pid, 5000), 128 + SIGKILL);
        } else {
            CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
        }
        /* The next claim, in another process, does not deadlock ... */
        CHECK_EQ(claim_in_child(&f, 32, 0), 0);
        /* ... nor do the ones after it, here. */
        CHECK_EQ(put(&f.r, 16, 2), 0);
    }
    int repairs = 0;
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(get_repairing(&f.r, &repairs, 5), 4);
        CHECK_EQ(get_repairing(&f.r, &repairs, 5), 2);
    }
    CHECK_EQ(repairs, 0);
    CHECK_EQ(pq_ring_depth(&f.r), 0);
    fixture_close(&f);
    return 0;
}

/*
 * A holder that dies inside pq_ring_claim, between counting its message
 * (tail_msgs) and publishing it (tail): the count must be undone, or the
 * queue stays one message "fuller" forever; with maxsize 1 it would never
 * take another message. The child plays the claim's stores by hand (the
 * same order as pq_ring_claim) and dies at that point.
 */
static int test_dead_between_count_and_publish(void)
{
    fixture f;
    if (fixture_open(&f, 4096, 1))
        return 1;
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_ring r;
        pq_proc_id self;
        CHILD_CHECK(pq_ring_open(&r, f.base, f.size) == 0);
        CHILD_CHECK(pq_proc_self(&self) == 0);
        pq_ring_ctl *c = r.ctl;
        CHILD_CHECK(pthread_mutex_lock(&c->claim_lock) == 0);
        uint64_t t = atomic_load(&c->tail), msgs = atomic_load(&c->tail_msgs);
        atomic_store(&c->claim_msgs, msgs);
        atomic_store(&c->claim_tail, t + 32);
        pq_record_header *h = (pq_record_header *)(r.data + (t & r.mask));
        atomic_store(&h->owner, pq_proc_pack(&self));
        atomic_store(&h->ctl, 16ull | (1ull << 40) | (((t >> 4) & 0xffff) << 48));
        atomic_store(&c->tail_msgs, msgs + 1);
        _exit(0); /* before the tail store */
    }
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    CHECK_EQ(pq_ring_depth(&f.r), 1); /* the orphan count, until the next claim */
    CHECK_EQ(claim_in_child(&f, 8, 0), 0); /* maxsize 1: fits only if undone */
    CHECK_EQ(pq_ring_depth(&f.r), 1);
    CHECK_EQ(atomic_load(&f.r.ctl->claim_tail), 0);
    int repairs = 0;
    CHECK_EQ(get_repairing(&f.r, &repairs, 5), 4);
    CHECK_EQ(repairs, 0);
    CHECK_EQ(pq_ring_depth(&f.r), 0);
    CHECK_EQ(put(&f.r, 8, 3), 0);
    CHECK_EQ(get_repairing(&f.r, &repairs, 5), 3);
    fixture_close(&f);
    return 0;
}

/* Same, but the holder died just after publishing (tail stored): the
 * count stays, and its CLAIMED record is repaired as usual. */
static int test_dead_after_publish(void)
{
    fixture f;
    if (fixture_open(&f, 4096, 2))
        return 1;
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_ring r;
        pq_proc_id self;
        CHILD_CHECK(pq_ring_open(&r, f.base, f.size) == 0);
        CHILD_CHECK(pq_proc_self(&self) == 0);
        pq_ring_ctl *c = r.ctl;
        CHILD_CHECK(pthread_mutex_lock(&c->claim_lock) == 0);
        uint64_t t = atomic_load(&c->tail), msgs = atomic_load(&c->tail_msgs);
        atomic_store(&c->claim_msgs, msgs);
        atomic_store(&c->claim_tail, t + 32);
        pq_record_header *h = (pq_record_header *)(r.data + (t & r.mask));
        atomic_store(&h->owner, pq_proc_pack(&self));
        atomic_store(&h->ctl, 16ull | (1ull << 40) | (((t >> 4) & 0xffff) << 48));
        atomic_store(&c->tail_msgs, msgs + 1);
        atomic_store(&c->tail, t + 32);
        _exit(0); /* before claim_tail is cleared and the lock released */
    }
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    CHECK_EQ(claim_in_child(&f, 8, 0), 0);
    CHECK_EQ(pq_ring_depth(&f.r), 2);
    int repairs = 0;
    CHECK_EQ(get_repairing(&f.r, &repairs, 5), 4);
    CHECK_EQ(repairs, 1);
    pq_ring_stats st;
    pq_ring_get_stats(&f.r, &st);
    CHECK_EQ(st.abandoned, 1);
    CHECK_EQ(st.depth, 0);
    CHECK_EQ(st.enqueued, 1);
    CHECK_EQ(st.dequeued, 1);
    fixture_close(&f);
    return 0;
}

/* Many producers killed at random moments while a consumer drains with
 * repairs: nothing deadlocks and every committed message arrives once. */
static int test_random_kills(void)
{
    enum { KIDS = 12 };
    fixture f;
    uint64_t rng = pq_test_seed();
    if (fixture_open(&f, 16384, 0))
        return 1;
    _Atomic uint64_t *committed = pq_test_shared(sizeof(uint64_t) * KIDS);
    CHECK(committed != NULL);
    pid_t pids[KIDS];
    for (int k = 0; k < KIDS; k++) {
        pids[k] = fork();
        CHECK(pids[k] >= 0);
        if (pids[k] == 0) {
            pq_ring r;
            CHILD_CHECK(pq_ring_open(&r, f.base, f.size) == 0);
            for (;;) {
                uint32_t len = 8;
                uint64_t pos;
                int rc = pq_ring_claim(&r, &len, 1, &pos);
                if (rc == -EAGAIN) {
                    pq_ring_wait_writable(&r, pq_ring_head(&r), pq_monotonic_ns() + 1000000, 0);
                    continue;
                }
                CHILD_CHECK(rc == 0);
                uint64_t seq = atomic_load(&committed[k]);
                memcpy(pq_ring_payload(&r, pos), &seq, 8);
                /* a kill may land here: claimed, not committed (made
                 * likelier now and then) */
                if (seq % 16 == 15)
                    pq_test_sleep_ms(1);
                pq_ring_commit(&r, pos, (uint8_t)k);
                atomic_store(&committed[k], seq + 1);
                pq_ring_notify_readable(&r, 1);
            }
        }
    }
    /* Drain while killing them one by one. */
    uint64_t next[KIDS] = {0};
    int alive = KIDS, repairs = 0;
    int64_t t0 = pq_monotonic_ns();
    while (pq_monotonic_ns() - t0 < 10000000000LL) {
        pq_ring_record recs[32];
        pq_ring_batch b;
        int rc = pq_ring_peek(&f.r, recs, 32, &b);
        if (rc >= 0) {
            uint64_t vals[32];
            for (int i = 0; i < rc; i++)
                memcpy(&vals[i], recs[i].payload, 8);
            if (pq_ring_consume(&f.r, &b) == 0) {
                for (int i = 0; i < rc; i++) {
                    int k = recs[i].type;
                    CHECK(k < KIDS);
                    CHECK_EQ(vals[i], next[k]); /* in order, none lost, none twice */
                    next[k]++;
                }
            }
        } else if (rc == -EINPROGRESS) {
            int rr = pq_ring_repair_head(&f.r);
            CHECK(rr >= 0);
            repairs += rr;
            if (rr == 0)
                pq_ring_wait_readable(&f.r, pq_monotonic_ns() + 1000000, 0);
        } else if (rc == -EAGAIN) {
            if (alive == 0)
                break;
            pq_ring_wait_readable(&f.r, pq_monotonic_ns() + 1000000, 0);
        } else {
            CHECK_EQ(rc, -ESTALE);
        }
        if (alive > 0 && pq_test_rand(&rng) % 64 == 0) {
            int k = KIDS - alive;
            CHECK(kill(pids[k], SIGKILL) == 0);
            CHECK_EQ(pq_test_wait_child(pids[k], 5000), 128 + SIGKILL);
            alive--;
        }
    }
    CHECK_EQ(alive, 0);
    CHECK_EQ(pq_ring_peek(&f.r, NULL, 0, &(pq_ring_batch){0}), -EAGAIN);
    /* Each child's committed messages were all delivered (one more may
     * have been committed but not yet counted when it was killed). */
    uint64_t total = 0;
    for (int k = 0; k < KIDS; k++) {
        uint64_t c = atomic_load(&committed[k]);
        CHECK(next[k] == c || next[k] == c + 1);
        total += next[k];
    }
    pq_ring_stats st;
    pq_ring_get_stats(&f.r, &st);
    CHECK_EQ(st.depth, 0);
    CHECK_EQ(st.dequeued, total);
    CHECK_EQ(st.abandoned, (uint64_t)repairs);
    CHECK_EQ(st.enqueued, total);
    printf("       %d producers killed: %" PRIu64 " messages, %d abandoned records repaired\n", KIDS,
           total, repairs);
    munmap(committed, sizeof(uint64_t) * KIDS);
    fixture_close(&f);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("test_ring_repair\n");
    RUN(test_exit_without_commit);
    RUN(test_sigkill_after_claim);
    RUN(test_zombie_claimer);
    RUN(test_stats_between_repair_and_pass);
    RUN(test_dead_batch);
    RUN(test_dead_after_padding);
    RUN(test_live_claimer_not_repaired);
    RUN(test_reused_pid_is_dead);
    RUN(test_dead_lock_holder);
    RUN(test_dead_between_count_and_publish);
    RUN(test_dead_after_publish);
    RUN(test_random_kills);
    return pq_test_result();
}
