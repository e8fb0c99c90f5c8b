/*
 * test_ring_slots.c - consumers that die holding messages: a consumer
 * announces in its process slot what it takes (pq_ring_take), so that
 * when it dies after its consume CAS and before pq_ring_taken_done, the
 * messages are counted as abandoned (pq_ring_reap_dead_consumers), once;
 * one that dies after handing them over (or before its CAS) is not
 * counted; slots of dead processes are taken over when the table is full;
 * with more live consumer processes than slots the rest go without
 * accounting; a forked child claims a slot of its own.
 */
#include "pq_test.h"

#include "../pq_proc.h"
#include "../pq_ring.h"

#define CAP 65536u
#define LEN 40u

typedef struct fixture {
    uint8_t *base;
    size_t size;
    pq_ring r;
} fixture;

static int fixture_open(fixture *f)
{
    f->size = pq_ring_segment_size(CAP);
    f->base = pq_test_shared(f->size);
    CHECK(f->base != NULL);
    CHECK_EQ(pq_ring_create(f->base, f->size, CAP, 0, NULL, 0), 0);
    CHECK_EQ(pq_ring_open(&f->r, f->base, f->size), 0);
    return 0;
}

static void fixture_close(fixture *f)
{
    munmap(f->base, f->size);
}

static int put_n(pq_ring *r, int n, uint8_t byte)
{
    for (int i = 0; i < n; i++) {
        uint32_t len = LEN;
        uint64_t pos;
        int rc = pq_ring_claim(r, &len, 1, &pos);
        if (rc < 0)
            return rc;
        memset(pq_ring_payload(r, pos), byte, len);
        pq_ring_commit(r, pos, byte);
    }
    return 0;
}

/* Peek up to max and take them (retrying a lost CAS): the number taken,
 * or a negative code. No pq_ring_taken_done: the caller decides. */
static int take(pq_ring *r, uint32_t max)
{
    pq_ring_record recs[16];
    pq_ring_batch b;
    if (max > 16)
        max = 16;
    for (int round = 0; round < 1000; round++) {
        int rc = pq_ring_peek(r, recs, max, &b);
        if (rc == -ESTALE)
            continue;
        if (rc <= 0)
            return rc;
        if (pq_ring_take(r, &b) == 0)
            return rc;
    }
    return -ELOOP;
}

static uint64_t taken_lost(pq_ring *r)
{
    pq_ring_stats s;
    pq_ring_get_stats(r, &s);
    return s.abandoned_taken;
}

/* Slots held by the process pid (any start time). */
static int slots_of(pq_ring *r, pid_t pid)
{
    int n = 0;
    for (int i = 0; i < PQ_RING_SLOTS; i++) {
        uint64_t o = atomic_load(&r->ctl->slots[i].owner);
        if (o != 0 && (pid_t)(uint32_t)(o & 0xffffffffu) == pid)
            n++;
    }
    return n;
}

static int slots_held(pq_ring *r)
{
    int n = 0;
    for (int i = 0; i < PQ_RING_SLOTS; i++)
        n += atomic_load(&r->ctl->slots[i].owner) != 0;
    return n;
}

/*
 * A child with a view of its own takes batches of the sizes in sizes[]
 * (0-terminated; a negative size: pq_ring_taken_done first, then -size),
 * then dies as told: 0 = _exit, 1 = SIGKILLed by the parent (it stops
 * itself first), 2 = _exit and stay a zombie (the parent must reap it).
 */
static int consumer_child(fixture *f, const int *sizes, int how, pid_t *pid_out)
{
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_ring r;
        CHILD_CHECK(pq_ring_open(&r, f->base, f->size) == 0);
        for (const int *s = sizes; *s != 0; s++) {
            int n = *s;
            if (n < 0) {
                pq_ring_taken_done(&r);
                n = -n;
            }
            CHILD_CHECK(take(&r, (uint32_t)n) == n);
        }
        if (how == 1)
            raise(SIGSTOP);
        _exit(0);
    }
    if (pid_out)
        *pid_out = pid;
    if (how == 1) {
        int status;
        CHECK(waitpid(pid, &status, WUNTRACED) == pid);
        CHECK(WIFSTOPPED(status));
        CHECK(kill(pid, SIGKILL) == 0);
        CHECK_EQ(pq_test_wait_child(pid, 5000), 128 + SIGKILL);
    } else if (how == 2) {
        siginfo_t info;
        CHECK(waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT) == 0);
        CHECK_EQ(info.si_status, 0);
    } else {
        CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    }
    return 0;
}

/* Died after its CAS, before handing the message over: counted, once. */
static int died_holding(int how)
{
    fixture f;
    pid_t pid;
    if (fixture_open(&f))
        return 1;
    CHECK_EQ(put_n(&f.r, 3, 0xA1), 0);
    const int sizes[] = {1, 0};
    if (consumer_child(&f, sizes, how, &pid))
        return 1;
    CHECK_EQ(slots_of(&f.r, pid), 1);
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 1);
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 0); /* exactly once */
    CHECK_EQ(slots_of(&f.r, pid), 0);              /* and the slot is free */
    if (how == 2)
        CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    pq_ring_stats s;
    pq_ring_get_stats(&f.r, &s);
    CHECK_EQ(s.abandoned, 1);
    CHECK_EQ(s.abandoned_taken, 1);
    CHECK_EQ(s.enqueued, 3);
    CHECK_EQ(s.dequeued, 0);
    CHECK_EQ(s.depth, 2);
    /* The others are still there, and taking them counts nothing. */
    CHECK_EQ(take(&f.r, 16), 2);
    pq_ring_taken_done(&f.r);
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 0);
    pq_ring_get_stats(&f.r, &s);
    CHECK_EQ(s.dequeued, 2);
    CHECK_EQ(s.enqueued, s.dequeued + s.abandoned_taken + s.depth);
    fixture_close(&f);
    return 0;
}

static int test_exit_holding(void) { return died_holding(0); }
static int test_sigkill_holding(void) { return died_holding(1); }
static int test_zombie_holding(void) { return died_holding(2); }

/* Handed over (pq_ring_taken_done) before dying: nothing counted. */
static int test_exit_after_done(void)
{
    fixture f;
    pid_t pid;
    if (fixture_open(&f))
        return 1;
    CHECK_EQ(put_n(&f.r, 4, 0xA2), 0);
    const int sizes[] = {1, -2, -1, 0}; /* done before each later take ... */
    if (consumer_child(&f, sizes, 0, &pid))
        return 1;
    /* ... but not after the last one: 1 held. */
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 1);
    pid_t pid2;
    CHECK_EQ(put_n(&f.r, 1, 0xA3), 0);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_ring r;
        CHILD_CHECK(pq_ring_open(&r, f.base, f.size) == 0);
        CHILD_CHECK(take(&r, 1) == 1);
        pq_ring_taken_done(&r);
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    pid2 = pid;
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 0);
    CHECK_EQ(taken_lost(&f.r), 1);
    /* Its slot stays held until a claimer finds the table full. */
    CHECK_EQ(slots_of(&f.r, pid2), 1);
    fixture_close(&f);
    return 0;
}

/* get_many: the batches of one operation add up until taken_done. */
static int test_batches_accumulate(void)
{
    fixture f;
    if (fixture_open(&f))
        return 1;
    CHECK_EQ(put_n(&f.r, 20, 0xB1), 0);
    const int three_batches[] = {3, 2, 4, 0};
    if (consumer_child(&f, three_batches, 1, NULL))
        return 1;
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 9);
    const int done_between[] = {3, -2, 0}; /* the 3 were handed over */
    if (consumer_child(&f, done_between, 0, NULL))
        return 1;
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 2);
    CHECK_EQ(taken_lost(&f.r), 11);
    pq_ring_stats s;
    pq_ring_get_stats(&f.r, &s);
    CHECK_EQ(s.depth, 6);
    CHECK_EQ(s.dequeued, 3);
    fixture_close(&f);
    return 0;
}

/*
 * Died between its announcement and its CAS (written here by hand, as a
 * consumer killed right there leaves it): the batch is still in the queue
 * and nothing is counted; if another consumer then takes that batch, it
 * is counted although the dead one took nothing: the window that
 * docs/design.md describes.
 */
static int test_dead_before_cas(void)
{
    fixture f;
    if (fixture_open(&f))
        return 1;
    CHECK_EQ(put_n(&f.r, 4, 0xC1), 0);
    for (int window = 0; window < 2; window++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            pq_ring r;
            pq_ring_record recs[2];
            pq_ring_batch b;
            CHILD_CHECK(pq_ring_open(&r, f.base, f.size) == 0);
            CHILD_CHECK(take(&r, 1) == 1); /* claims the slot */
            pq_ring_taken_done(&r);
            CHILD_CHECK(pq_ring_peek(&r, recs, 1, &b) == 1);
            pq_ring_slot *s = &r.ctl->slots[r.slot];
            atomic_store(&s->taking_head, b.head);
            atomic_store(&s->taking_next, b.next);
            atomic_store(&s->taking, b.count);
            _exit(0);
        }
        CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
        if (window) {
            CHECK_EQ(take(&f.r, 1), 1);
            pq_ring_taken_done(&f.r);
            CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 1); /* counted: the window */
        } else {
            CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 0);
        }
        CHECK_EQ(slots_of(&f.r, pid), 0);
    }
    pq_ring_stats s;
    pq_ring_get_stats(&f.r, &s);
    CHECK_EQ(s.depth, 1);
    CHECK_EQ(s.abandoned_taken, 1);
    fixture_close(&f);
    return 0;
}

/* A live consumer (stopped, even) inside its take is left alone. */
static int test_live_not_reaped(void)
{
    fixture f;
    int go[2];
    if (fixture_open(&f))
        return 1;
    CHECK_EQ(put_n(&f.r, 2, 0xD1), 0);
    CHECK(pipe(go) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_ring r;
        char c;
        close(go[1]);
        CHILD_CHECK(pq_ring_open(&r, f.base, f.size) == 0);
        CHILD_CHECK(take(&r, 1) == 1);
        raise(SIGSTOP);
        CHILD_CHECK(read(go[0], &c, 1) == 1);
        pq_ring_taken_done(&r);
        _exit(0);
    }
    close(go[0]);
    int status;
    CHECK(waitpid(pid, &status, WUNTRACED) == pid && WIFSTOPPED(status));
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 0);
    CHECK_EQ(slots_of(&f.r, pid), 1);
    CHECK(kill(pid, SIGCONT) == 0);
    CHECK(write(go[1], "g", 1) == 1);
    close(go[1]);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 0);
    CHECK_EQ(taken_lost(&f.r), 0);
    fixture_close(&f);
    return 0;
}

/* The table full of dead processes' slots: the next claimer frees them,
 * counting what those died holding, and gets one. */
static int test_takeover_when_full(void)
{
    fixture f;
    if (fixture_open(&f))
        return 1;
    /* 32 children hold 1; 32 hand 1 over and then hold another; +1 for us */
    CHECK_EQ(put_n(&f.r, PQ_RING_SLOTS + PQ_RING_SLOTS / 2 + 1, 0xE1), 0);
    for (int i = 0; i < PQ_RING_SLOTS; i++) {
        const int holding[] = {1, 0}, handed_over[] = {1, -1, 0};
        /* odd children hand their first message over, then hold another */
        if (i % 2 == 0 ? consumer_child(&f, holding, 0, NULL)
                       : consumer_child(&f, handed_over, 0, NULL))
            return 1;
    }
    CHECK_EQ(slots_held(&f.r), PQ_RING_SLOTS);
    CHECK_EQ(f.r.slot, -1);
    CHECK_EQ(take(&f.r, 1), 1); /* claims: frees and counts all 64 */
    CHECK(f.r.slot >= 0);
    CHECK_EQ(slots_held(&f.r), 1);
    CHECK_EQ(taken_lost(&f.r), PQ_RING_SLOTS);
    pq_ring_taken_done(&f.r);
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 0);
    pq_ring_stats s;
    pq_ring_get_stats(&f.r, &s);
    CHECK_EQ(s.depth, 0);
    CHECK_EQ(s.dequeued, PQ_RING_SLOTS / 2 + 1);
    fixture_close(&f);
    return 0;
}

/* More live consumer processes than slots: the rest take without
 * accounting, and nothing breaks. */
static int test_more_processes_than_slots(void)
{
    fixture f;
    int go[2];
    pid_t kids[PQ_RING_SLOTS];
    if (fixture_open(&f))
        return 1;
    CHECK_EQ(put_n(&f.r, PQ_RING_SLOTS + 8, 0xF1), 0);
    CHECK(pipe(go) == 0);
    for (int i = 0; i < PQ_RING_SLOTS; i++) {
        int ready[2];
        CHECK(pipe(ready) == 0);
        kids[i] = fork();
        CHECK(kids[i] >= 0);
        if (kids[i] == 0) {
            pq_ring r;
            char c;
            close(go[1]);
            close(ready[0]);
            CHILD_CHECK(pq_ring_open(&r, f.base, f.size) == 0);
            CHILD_CHECK(take(&r, 1) == 1);
            pq_ring_taken_done(&r);
            CHILD_CHECK(write(ready[1], "r", 1) == 1);
            CHILD_CHECK(read(go[0], &c, 1) == 0); /* until the parent closes it */
            _exit(0);
        }
        close(ready[1]);
        char c;
        CHECK(read(ready[0], &c, 1) == 1);
        close(ready[0]);
    }
    close(go[0]);
    CHECK_EQ(slots_held(&f.r), PQ_RING_SLOTS);
    /* The 65th process: takes, without a slot. */
    CHECK_EQ(take(&f.r, 2), 2);
    CHECK_EQ(f.r.slot, -1);
    CHECK_EQ(f.r.held, 0);
    pq_ring_taken_done(&f.r);
    /* A 66th that dies holding a message cannot be counted. */
    const int holding[] = {1, 0};
    if (consumer_child(&f, holding, 0, NULL))
        return 1;
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 0);
    CHECK_EQ(slots_held(&f.r), PQ_RING_SLOTS);
    /* Once they are gone, a new view gets a slot. */
    close(go[1]);
    for (int i = 0; i < PQ_RING_SLOTS; i++)
        CHECK_EQ(pq_test_wait_child(kids[i], 5000), 0);
    pq_ring r2;
    CHECK_EQ(pq_ring_open(&r2, f.base, f.size), 0);
    CHECK_EQ(take(&r2, 1), 1);
    CHECK(r2.slot >= 0);
    pq_ring_taken_done(&r2);
    CHECK_EQ(taken_lost(&f.r), 0);
    fixture_close(&f);
    return 0;
}

/* A forked child using its parent's view claims a slot of its own and
 * never writes the parent's. */
static int test_fork_child_claims_own_slot(void)
{
    fixture f;
    if (fixture_open(&f))
        return 1;
    CHECK_EQ(put_n(&f.r, 4, 0x11), 0);
    CHECK_EQ(take(&f.r, 1), 1); /* the parent holds one (mid-get) */
    int mine = f.r.slot;
    CHECK(mine >= 0);
    pq_ring_slot *ps = &f.r.ctl->slots[mine];
    uint64_t parent_owner = atomic_load(&ps->owner);
    uint64_t parent_taking = atomic_load(&ps->taking);
    CHECK_EQ(parent_taking, 1);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_ring_taken_done(&f.r);   /* inherited: must not clear the parent's */
        CHILD_CHECK(atomic_load(&ps->taking) == 1);
        CHILD_CHECK(take(&f.r, 1) == 1);
        CHILD_CHECK(f.r.slot >= 0 && f.r.slot != mine);
        CHILD_CHECK(atomic_load(&ps->taking) == 1);
        _exit(0); /* holding one */
    }
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    CHECK_EQ(atomic_load(&ps->owner), parent_owner);
    CHECK_EQ(atomic_load(&ps->taking), 1);
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 1); /* the child's, not ours */
    CHECK_EQ(atomic_load(&ps->taking), 1);
    pq_ring_taken_done(&f.r);
    CHECK_EQ(atomic_load(&ps->taking), 0);
    /* A child releasing the inherited view leaves the parent's slot. */
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_ring_release_slot(&f.r);
        CHILD_CHECK(atomic_load(&ps->owner) == parent_owner);
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    CHECK_EQ(atomic_load(&ps->owner), parent_owner);
    CHECK_EQ(f.r.slot, mine);
    /* The parent's release frees it. */
    pq_ring_release_slot(&f.r);
    CHECK_EQ(atomic_load(&ps->owner), 0);
    CHECK_EQ(f.r.slot, -1);
    fixture_close(&f);
    return 0;
}

/* pq_ring_consume (drops, passing abandoned records) announces nothing
 * and claims no slot; the first consumers get a cache line each. */
static int test_consume_claims_nothing_and_spread(void)
{
    fixture f;
    pq_ring_record rec;
    pq_ring_batch b;
    if (fixture_open(&f))
        return 1;
    CHECK_EQ(put_n(&f.r, PQ_RING_SLOTS / 2 + 1, 0x22), 0);
    CHECK_EQ(pq_ring_peek(&f.r, &rec, 1, &b), 1);
    CHECK_EQ(pq_ring_consume(&f.r, &b), 0);
    CHECK_EQ(f.r.slot, -1);
    CHECK_EQ(slots_held(&f.r), 0);
    /* PQ_RING_SLOTS / 2 views of this process: one cache line each. */
    pq_ring views[PQ_RING_SLOTS / 2];
    int lines[PQ_RING_SLOTS / 2] = {0};
    for (int i = 0; i < PQ_RING_SLOTS / 2; i++) {
        CHECK_EQ(pq_ring_open(&views[i], f.base, f.size), 0);
        CHECK_EQ(take(&views[i], 1), 1);
        pq_ring_taken_done(&views[i]);
        CHECK(views[i].slot >= 0);
        uintptr_t line = (uintptr_t)&f.r.ctl->slots[views[i].slot] / PQ_CACHE_LINE;
        for (int j = 0; j < i; j++)
            CHECK(lines[j] != (int)(line - (uintptr_t)f.r.ctl / PQ_CACHE_LINE));
        lines[i] = (int)(line - (uintptr_t)f.r.ctl / PQ_CACHE_LINE);
    }
    CHECK_EQ(pq_ring_reap_dead_consumers(&f.r), 0); /* our own: alive */
    for (int i = 0; i < PQ_RING_SLOTS / 2; i++)
        pq_ring_release_slot(&views[i]);
    CHECK_EQ(slots_held(&f.r), 0);
    fixture_close(&f);
    return 0;
}

static int test_layout(void)
{
    CHECK(PQ_RING_CTL_OFFSET + sizeof(pq_ring_ctl) <= PQ_RING_DATA_OFFSET);
    CHECK_EQ(sizeof(pq_ring_slot), 32);
    CHECK_EQ(offsetof(pq_ring_ctl, slots) % PQ_CACHE_LINE, 0);
    CHECK_EQ(PQ_LAYOUT_VERSION, 4); /* 4: epochs (pq_ring_ctl.epochs, level_reserved) */
    return 0;
}

int main(void)
{
    printf("test_ring_slots\n");
    RUN(test_layout);
    RUN(test_exit_holding);
    RUN(test_sigkill_holding);
    RUN(test_zombie_holding);
    RUN(test_exit_after_done);
    RUN(test_batches_accumulate);
    RUN(test_dead_before_cas);
    RUN(test_live_not_reaped);
    RUN(test_takeover_when_full);
    RUN(test_more_processes_than_slots);
    RUN(test_fork_child_claims_own_slot);
    RUN(test_consume_claims_nothing_and_spread);
    return pq_test_result();
}
