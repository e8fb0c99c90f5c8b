/*
 * test_ring_mp.c - P producer processes x C consumer processes over one
 * small ring (64 KiB), moving many messages of random sizes (so records
 * wrap, pad and fill the ring), blocking with pq_ring_wait_readable /
 * pq_ring_wait_writable and deadlines. Every message carries its
 * producer id, sequence number and a checksum of its payload; consumers
 * verify what they got (after the consume that validates the copy) and
 * log (producer, seq) in shared memory; the parent then checks that every
 * message arrived exactly once and that, per consumer, each producer's
 * messages came in increasing order.
 *
 * Environment: PQ_MP_MESSAGES scales the message counts (default 200000
 * per configuration), PQ_TEST_SEED changes the sizes.
 */
#include "pq_test.h"

#include "../pq_ring.h"

#define MAX_PROCS 8
#define SLICE_NS (50 * 1000000LL) /* one park; the binding uses slices too */
#define RUN_LIMIT_NS (90 * 1000000000LL)

typedef struct msg_head {
    uint32_t producer;
    uint32_t seq;
    uint32_t len; /* whole payload, this header included */
    uint32_t sum; /* FNV-1a of the bytes after this header */
} msg_head;

typedef struct proc_stats {
    uint64_t batches, records, lost_cas, stale, waits, timeouts, eagain;
} proc_stats;

typedef struct control {
    _Atomic uint64_t consumed;
    _Atomic int failed;
    _Atomic int started;
    proc_stats prod[MAX_PROCS], cons[MAX_PROCS];
    uint64_t log_count[MAX_PROCS];
} control;

typedef struct config {
    const char *name;
    int producers, consumers;
    uint64_t messages;
    uint64_t capacity;
    uint64_t maxsize;
    uint32_t max_batch_put, max_batch_get;
} config;

static uint32_t fnv1a(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}

static uint32_t message_len(uint64_t *rng)
{
    uint64_t x = pq_test_rand(rng) % 100;
    if (x < 70)
        return (uint32_t)(sizeof(msg_head) + pq_test_rand(rng) % 200);
    if (x < 95)
        return (uint32_t)(200 + pq_test_rand(rng) % 1800);
    return (uint32_t)(2000 + pq_test_rand(rng) % 10000);
}

static void fill_message(uint8_t *dst, uint32_t producer, uint32_t seq, uint32_t len)
{
    msg_head h = {producer, seq, len, 0};
    uint64_t x = ((uint64_t)producer << 32 | seq) * 0x9E3779B97F4A7C15ULL + 1;
    for (uint32_t i = sizeof h; i < len; i++) {
        if ((i & 7) == 0)
            pq_test_rand(&x);
        dst[i] = (uint8_t)(x >> ((i & 7) * 8));
    }
    h.sum = fnv1a(dst + sizeof h, len - sizeof h);
    memcpy(dst, &h, sizeof h);
}

static int64_t run_deadline;

static void producer(const config *cf, uint8_t *base, size_t size, control *ctl, int id)
{
    pq_ring r;
    proc_stats *st = &ctl->prod[id];
    uint64_t rng = pq_test_seed() ^ ((uint64_t)id * 0x1234567ULL + 77);
    uint64_t per = cf->messages / (uint64_t)cf->producers;
    uint32_t lens[16];
    uint64_t pos[16];
    CHILD_CHECK(pq_ring_open(&r, base, size) == 0);
    alarm(120);

    uint64_t seq = 0;
    while (seq < per) {
        uint32_t n = 1 + (uint32_t)(pq_test_rand(&rng) % cf->max_batch_put);
        if (n > per - seq)
            n = (uint32_t)(per - seq);
        for (uint32_t i = 0; i < n; i++)
            lens[i] = message_len(&rng);
        for (;;) {
            uint64_t seen = pq_ring_head(&r);
            int rc = pq_ring_claim(&r, lens, n, pos);
            if (rc == 0)
                break;
            if (rc == -EMSGSIZE && n > 1) { /* too big a batch: one at a time */
                n = 1;
                continue;
            }
            CHILD_CHECK(rc == -EAGAIN);
            st->eagain++;
            if (atomic_load(&ctl->failed) || pq_monotonic_ns() > run_deadline)
                _exit(2);
            st->waits++;
            rc = pq_ring_wait_writable(&r, seen, pq_monotonic_ns() + SLICE_NS, 64);
            if (rc == -ETIMEDOUT)
                st->timeouts++;
            else
                CHILD_CHECK(rc == 0 || rc == -EINTR);
        }
        for (uint32_t i = 0; i < n; i++)
            fill_message(pq_ring_payload(&r, pos[i]), (uint32_t)id, (uint32_t)(seq + i), lens[i]);
        /* Commit in order or back to front. */
        if (pq_test_rand(&rng) % 2) {
            for (uint32_t i = 0; i < n; i++)
                pq_ring_commit(&r, pos[i], (uint8_t)id);
        } else {
            for (uint32_t i = n; i-- > 0;)
                pq_ring_commit(&r, pos[i], (uint8_t)id);
        }
        pq_ring_notify_readable(&r, n);
        st->batches++;
        st->records += n;
        seq += n;
    }
    _exit(0);
}

static void consumer(const config *cf, uint8_t *base, size_t size, control *ctl, uint64_t *log, int id)
{
    pq_ring r;
    proc_stats *st = &ctl->cons[id];
    pq_ring_record recs[64];
    pq_ring_batch b;
    uint8_t *copy = malloc(64 * 32768);
    int64_t last_seq[MAX_PROCS];
    uint64_t nlog = 0;
    CHILD_CHECK(copy != NULL);
    CHILD_CHECK(pq_ring_open(&r, base, size) == 0);
    for (int i = 0; i < MAX_PROCS; i++)
        last_seq[i] = -1;
    alarm(120);

    for (;;) {
        int rc = pq_ring_peek(&r, recs, cf->max_batch_get, &b);
        if (rc > 0) {
            /* The optimistic copy, validated by the consume below. */
            size_t off = 0;
            for (int i = 0; i < rc; i++) {
                CHILD_CHECK(recs[i].len <= 32768);
                memcpy(copy + off, recs[i].payload, recs[i].len);
                off += 32768;
            }
            if (pq_ring_consume(&r, &b) != 0) {
                st->lost_cas++;
                continue;
            }
            for (int i = 0; i < rc; i++) {
                const uint8_t *m = copy + (size_t)i * 32768;
                msg_head h;
                CHILD_CHECK(recs[i].len >= sizeof h);
                memcpy(&h, m, sizeof h);
                CHILD_CHECK(h.len == recs[i].len);
                CHILD_CHECK(h.producer < (uint32_t)cf->producers);
                CHILD_CHECK(recs[i].type == h.producer);
                CHILD_CHECK(h.sum == fnv1a(m + sizeof h, h.len - sizeof h));
                CHILD_CHECK((int64_t)h.seq > last_seq[h.producer]);
                last_seq[h.producer] = h.seq;
                log[nlog++] = (uint64_t)h.producer << 32 | h.seq;
            }
            ctl->log_count[id] = nlog;
            st->batches++;
            st->records += (uint64_t)rc;
            if (atomic_fetch_add(&ctl->consumed, (uint64_t)rc) + (uint64_t)rc >= cf->messages)
                pq_ring_notify_readable(&r, INT32_MAX); /* wake the others to leave */
            continue;
        }
        if (rc == 0) { /* padding or abandoned only: pass it */
            pq_ring_consume(&r, &b);
            continue;
        }
        if (rc == -ESTALE) {
            st->stale++;
            continue;
        }
        CHILD_CHECK(rc == -EAGAIN || rc == -EINPROGRESS);
        if (atomic_load(&ctl->consumed) >= cf->messages)
            break;
        if (atomic_load(&ctl->failed) || pq_monotonic_ns() > run_deadline)
            _exit(2);
        st->waits++;
        rc = pq_ring_wait_readable(&r, pq_monotonic_ns() + SLICE_NS, 64);
        if (rc == -ETIMEDOUT) {
            st->timeouts++;
            /* Nobody dies here: there must be nothing to repair. */
            CHILD_CHECK(pq_ring_repair_head(&r) == 0);
        } else {
            CHILD_CHECK(rc == 0 || rc == -EINTR);
        }
    }
    ctl->log_count[id] = nlog;
    free(copy);
    _exit(0);
}

static int run_config(const config *cf)
{
    const size_t size = pq_ring_segment_size(cf->capacity);
    const uint64_t per = cf->messages / (uint64_t)cf->producers;
    const uint64_t total = per * (uint64_t)cf->producers;
    config c = *cf;
    c.messages = total;
    uint8_t *base = pq_test_shared(size);
    control *ctl = pq_test_shared(sizeof *ctl);
    size_t log_bytes = (size_t)total * sizeof(uint64_t);
    uint64_t *logs[MAX_PROCS];
    pid_t pids[2 * MAX_PROCS];
    int npids = 0;
    CHECK(base != NULL && ctl != NULL);
    CHECK(cf->producers <= MAX_PROCS && cf->consumers <= MAX_PROCS);
    CHECK_EQ(pq_ring_create(base, size, cf->capacity, cf->maxsize, NULL, 0), 0);
    for (int i = 0; i < cf->consumers; i++) {
        logs[i] = pq_test_shared(log_bytes);
        CHECK(logs[i] != NULL);
    }

    int64_t t0 = pq_monotonic_ns();
    run_deadline = t0 + RUN_LIMIT_NS;
    for (int i = 0; i < cf->consumers; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0)
            consumer(&c, base, size, ctl, logs[i], i);
        pids[npids++] = pid;
    }
    for (int i = 0; i < cf->producers; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0)
            producer(&c, base, size, ctl, i);
        pids[npids++] = pid;
    }
    int bad = 0;
    for (int i = 0; i < npids; i++) {
        int rc = pq_test_wait_child(pids[i], 120000);
        if (rc != 0) {
            fprintf(stderr, "%s: child %d (%s %d) exited with %d\n", cf->name, (int)pids[i],
                    i < cf->consumers ? "consumer" : "producer",
                    i < cf->consumers ? i : i - cf->consumers, rc);
            atomic_store(&ctl->failed, 1);
            bad = 1;
        }
    }
    double secs = (double)(pq_monotonic_ns() - t0) / 1e9;
    CHECK(!bad);

    /* Exactly once, in per-producer order per consumer. */
    uint8_t *seen = calloc((size_t)total, 1);
    CHECK(seen != NULL);
    uint64_t got = 0;
    for (int i = 0; i < cf->consumers; i++) {
        int64_t last[MAX_PROCS];
        for (int k = 0; k < MAX_PROCS; k++)
            last[k] = -1;
        for (uint64_t j = 0; j < ctl->log_count[i]; j++) {
            uint32_t p = (uint32_t)(logs[i][j] >> 32), s = (uint32_t)logs[i][j];
            CHECK(p < (uint32_t)cf->producers && s < per);
            CHECK((int64_t)s > last[p]);
            last[p] = s;
            CHECK_EQ(seen[(uint64_t)p * per + s], 0);
            seen[(uint64_t)p * per + s] = 1;
            got++;
        }
    }
    CHECK_EQ(got, total);
    CHECK_EQ(atomic_load(&ctl->consumed), total);
    free(seen);

    pq_ring r;
    pq_ring_stats st;
    CHECK_EQ(pq_ring_open(&r, base, size), 0);
    pq_ring_get_stats(&r, &st);
    CHECK_EQ(st.enqueued, total);
    CHECK_EQ(st.dequeued, total);
    CHECK_EQ(st.depth, 0);
    CHECK_EQ(st.depth_bytes, 0);
    CHECK_EQ(st.abandoned, 0);
    CHECK_EQ(st.waiting_consumers, 0);
    CHECK_EQ(st.waiting_producers, 0);

    proc_stats sp = {0}, sc = {0};
    for (int i = 0; i < cf->producers; i++) {
        sp.batches += ctl->prod[i].batches;
        sp.waits += ctl->prod[i].waits;
        sp.timeouts += ctl->prod[i].timeouts;
        sp.eagain += ctl->prod[i].eagain;
    }
    for (int i = 0; i < cf->consumers; i++) {
        sc.batches += ctl->cons[i].batches;
        sc.lost_cas += ctl->cons[i].lost_cas;
        sc.stale += ctl->cons[i].stale;
        sc.waits += ctl->cons[i].waits;
        sc.timeouts += ctl->cons[i].timeouts;
    }
    printf("       %-14s %" PRIu64 " msgs, %" PRIu64 " MiB through %" PRIu64
           " KiB in %.2f s: puts %" PRIu64 " (full %" PRIu64 ", waits %" PRIu64 ", timeouts %" PRIu64
           "), gets %" PRIu64 " (lost CAS %" PRIu64 ", stale %" PRIu64 ", waits %" PRIu64
           ", timeouts %" PRIu64 ")\n",
           cf->name, total, atomic_load(&r.ctl->tail) >> 20, cf->capacity >> 10, secs, sp.batches,
           sp.eagain, sp.waits, sp.timeouts, sc.batches, sc.lost_cas, sc.stale, sc.waits,
           sc.timeouts);

    for (int i = 0; i < cf->consumers; i++)
        munmap(logs[i], log_bytes);
    munmap(ctl, sizeof *ctl);
    munmap(base, size);
    return 0;
}

static uint64_t messages(uint64_t dflt)
{
    const char *s = getenv("PQ_MP_MESSAGES");
    uint64_t n = s ? strtoull(s, NULL, 0) : 200000;
    return n ? n * dflt / 200000 : dflt;
}

static config cfg_2x2, cfg_4x3, cfg_maxsize, cfg_1x1;

static int test_2x2(void) { return run_config(&cfg_2x2); }
static int test_4x3(void) { return run_config(&cfg_4x3); }
static int test_maxsize_2x2(void) { return run_config(&cfg_maxsize); }
static int test_1x1_batches(void) { return run_config(&cfg_1x1); }

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("test_ring_mp (seed %#" PRIx64 ")\n", pq_test_seed());
    cfg_2x2 = (config){"2x2", 2, 2, messages(200000), 65536, 0, 4, 8};
    cfg_4x3 = (config){"4x3", 4, 3, messages(200000), 65536, 0, 4, 8};
    cfg_maxsize = (config){"2x2 maxsize=8", 2, 2, messages(50000), 65536, 8, 3, 4};
    cfg_1x1 = (config){"1x1 batch", 1, 1, messages(100000), 65536, 0, 16, 64};
    RUN(test_2x2);
    RUN(test_4x3);
    RUN(test_maxsize_2x2);
    RUN(test_1x1_batches);
    return pq_test_result();
}
