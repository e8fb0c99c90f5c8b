/*
 * test_ring_reserve.c - lazy reservation of the ring's data area: a claim
 * that would write past the backed extent fails with -ENOBUFS and says how
 * far it needs, pq_ring_reserve backs it a chunk at a time and publishes
 * the extent (atomic max, never down), no claim ever lays a byte past the
 * backed extent (the pages beyond stay non-resident: mincore), and once the
 * first lap is done the whole area is backed and claims never ask again.
 * Producers in two processes grow the same segment concurrently.
 */
#include "pq_test.h"

#include "../pq_ring.h"

#define CAP (4u << 20)
#define CHUNK PQ_RING_RESERVE_CHUNK

static uint64_t backed_word(const pq_ring *r)
{
    /* Level 0's extent (pq_ring_ctl.level_reserved). */
    return (atomic_load_explicit(&r->ctl->level_reserved[0], memory_order_acquire) & 0xffffffffu) *
           PQ_RING_EXTENT_UNIT;
}

/* Pages of the data area from `from` to its end that are resident. */
static size_t resident_pages(const pq_ring *r, uint64_t from)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t n = (size_t)(r->capacity - from) / page, count = 0;
    unsigned char *vec = calloc(n ? n : 1, 1);
    if (vec == NULL || mincore(r->data + from, (size_t)(r->capacity - from), vec) != 0) {
        free(vec);
        return (size_t)-1;
    }
    for (size_t i = 0; i < n; i++)
        count += vec[i] & 1;
    free(vec);
    return count;
}

/* Every page of the data area below `to` is resident (backed). */
static int all_resident_below(const pq_ring *r, uint64_t to)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return resident_pages(r, 0) - resident_pages(r, to) == (size_t)(to / page);
}

/* Put one record, backing more of the area when the claim asks (as the
 * binding does). 0, or the claim's error; *asked counts the -ENOBUFS. */
static int put_backing(pq_ring *r, uint32_t len, uint64_t *pos, int *asked)
{
    for (;;) {
        int rc = pq_ring_claim(r, &len, 1, pos);
        if (rc == -ENOBUFS) {
            (*asked)++;
            if (r->reserve_need <= backed_word(r) || r->reserve_need > r->capacity)
                return -EPROTO; /* it must ask for more than is backed */
            rc = pq_ring_reserve(r, r->reserve_need);
            if (rc < 0)
                return rc;
            if (backed_word(r) < r->reserve_need)
                return -EPROTO;
            continue;
        }
        if (rc < 0)
            return rc;
        memset(pq_ring_payload(r, *pos), 0x5a, len);
        pq_ring_commit(r, *pos, 1);
        return 0;
    }
}

static int drain(pq_ring *r, uint32_t *got)
{
    pq_ring_record recs[64];
    pq_ring_batch b;
    for (;;) {
        int n = pq_ring_peek(r, recs, 64, &b);
        if (n == -EAGAIN)
            return 0;
        if (n == -ESTALE)
            continue;
        CHECK(n >= 0);
        CHECK_EQ(pq_ring_consume(r, &b), 0);
        *got += (uint32_t)n;
    }
}

static int test_first_lap_backs_chunk_by_chunk(void)
{
    const size_t size = pq_ring_segment_size(CAP);
    uint8_t *base = pq_test_shared(size);
    pq_ring prod, cons;
    uint64_t pos;
    uint32_t put_n = 0, got = 0;
    int asked = 0;
    uint64_t seen = 0;
    CHECK(base != NULL);
    CHECK_EQ(pq_ring_create_backed(base, size, CAP, 0, NULL, 0, CHUNK), 0);
    CHECK_EQ(pq_ring_open(&prod, base, size), 0);
    CHECK_EQ(pq_ring_open(&cons, base, size), 0);
    CHECK_EQ(backed_word(&prod), CHUNK);
    CHECK_EQ(resident_pages(&prod, 0), 0u); /* creation touched no data page */

    /* Up to three laps of 1000-byte records; after every put, nothing
     * beyond the backed extent has been touched. */
    while (put_n < 3 * (CAP / 1024)) {
        int rc = put_backing(&prod, 1000, &pos, &asked);
        if (rc == -EAGAIN) {
            CHECK_EQ(drain(&cons, &got), 0);
            continue;
        }
        CHECK_EQ(rc, 0);
        put_n++;
        uint64_t backed = backed_word(&prod);
        CHECK(backed <= CAP && backed % CHUNK == 0);
        if (backed != seen && backed > CHUNK) { /* what it published has pages */
            CHECK(all_resident_below(&prod, backed));
            seen = backed;
        }
        if (pos < CAP) { /* first lap: the record lies below the extent */
            CHECK(pos + pq_ring_record_size(1000) <= backed);
            CHECK_EQ(resident_pages(&prod, backed), 0u);
        }
    }
    CHECK_EQ(drain(&cons, &got), 0);
    CHECK_EQ(got, put_n);
    CHECK_EQ(asked, (int)(CAP / CHUNK) - 1); /* once per chunk after the first */
    CHECK_EQ(backed_word(&prod), CAP);
    CHECK_EQ(prod.reserved_cache, UINT64_MAX); /* no more checks past the first lap */

    /* The extent only grows: a smaller or repeated request changes nothing. */
    CHECK_EQ(pq_ring_reserve(&prod, CHUNK), 0);
    CHECK_EQ(backed_word(&prod), CAP);
    CHECK_EQ(pq_ring_reserve(&prod, UINT64_MAX), 0);
    CHECK_EQ(backed_word(&prod), CAP);
    munmap(base, size);
    return 0;
}

/* A view opened before the extent grew learns it from the shared word:
 * its claim past its cached extent re-reads it instead of asking again. */
static int test_stale_view_rereads_extent(void)
{
    const size_t size = pq_ring_segment_size(CAP);
    uint8_t *base = pq_test_shared(size);
    pq_ring a, b;
    uint64_t pos;
    uint32_t len = CHUNK - 8; /* with its header: past the first chunk */
    CHECK(base != NULL);
    CHECK_EQ(pq_ring_create_backed(base, size, CAP, 0, NULL, 0, CHUNK), 0);
    CHECK_EQ(pq_ring_open(&a, base, size), 0);
    CHECK_EQ(pq_ring_open(&b, base, size), 0);
    CHECK_EQ(pq_ring_claim(&a, &len, 1, &pos), -ENOBUFS);
    CHECK_EQ(a.reserve_need, (uint64_t)pq_ring_record_size(len));
    CHECK_EQ(pq_ring_reserve(&a, a.reserve_need), 0);
    CHECK_EQ(backed_word(&a), 2 * CHUNK);
    CHECK_EQ(pq_ring_claim(&b, &len, 1, &pos), 0); /* b re-reads, no -ENOBUFS */
    CHECK_EQ(b.reserved_cache, 2 * CHUNK);
    pq_ring_commit(&b, pos, 1);
    /* Fully backed at creation (pq_ring_create): never asks. */
    CHECK_EQ(pq_ring_create(base, size, CAP, 0, NULL, 0), 0);
    CHECK_EQ(pq_ring_open(&a, base, size), 0);
    len = 100;
    CHECK_EQ(pq_ring_claim(&a, &len, 1, &pos), 0);
    pq_ring_commit(&a, pos, 1);
    CHECK_EQ(a.reserved_cache, UINT64_MAX);
    munmap(base, size);
    return 0;
}

/* Two producer processes grow one segment at once while a consumer
 * drains it: every message arrives, and the extent ends at the capacity. */
static int test_two_processes_grow_it(void)
{
    const size_t size = pq_ring_segment_size(CAP);
    uint8_t *base = pq_test_shared(size);
    const uint32_t per_child = 2 * (CAP / 512);
    pid_t pids[2];
    pq_ring cons;
    uint32_t got = 0;
    CHECK(base != NULL);
    CHECK_EQ(pq_ring_create_backed(base, size, CAP, 0, NULL, 0, CHUNK), 0);
    for (int i = 0; i < 2; i++) {
        pids[i] = fork();
        CHECK(pids[i] >= 0);
        if (pids[i] == 0) {
            pq_ring r;
            uint64_t pos;
            int asked = 0;
            CHILD_CHECK(pq_ring_open(&r, base, size) == 0);
            for (uint32_t k = 0; k < per_child;) {
                int rc = put_backing(&r, 400, &pos, &asked);
                if (rc == -EAGAIN) {
                    sched_yield();
                    continue;
                }
                CHILD_CHECK(rc == 0);
                k++;
            }
            _exit(0);
        }
    }
    CHECK_EQ(pq_ring_open(&cons, base, size), 0);
    int64_t deadline = pq_test_now_ns() + 60 * (int64_t)1000000000;
    while (got < 2 * per_child && pq_test_now_ns() < deadline) {
        pq_ring_record recs[64];
        pq_ring_batch b;
        int n = pq_ring_peek(&cons, recs, 64, &b);
        if (n == -EAGAIN || n == -EINPROGRESS || n == -ESTALE) {
            sched_yield();
            continue;
        }
        CHECK(n >= 0);
        if (pq_ring_consume(&cons, &b) == 0)
            got += (uint32_t)n;
    }
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pq_test_wait_child(pids[i], 60000), 0);
    CHECK_EQ(got, 2 * per_child);
    CHECK_EQ(backed_word(&cons), CAP);
    munmap(base, size);
    return 0;
}

int main(void)
{
    CHECK_EQ(pq_ring_populate_supported(), 1); /* Linux >= 5.14 */
    RUN(test_first_lap_backs_chunk_by_chunk);
    RUN(test_stale_view_rereads_extent);
    RUN(test_two_processes_grow_it);
    return pq_test_failed;
}
