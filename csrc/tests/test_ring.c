/*
 * test_ring.c - the record ring in one process: create/open, claim /
 * commit / peek / consume, FIFO order, wrap-around with padding, the
 * maxsize and byte limits, oversize records, batch claims, a CLAIMED head,
 * a stale batch, the statistics, joinable-queue accounting and the waits.
 * Producer and consumer use separate views of the segment (as separate
 * processes would), so the cursor caches of the views are exercised.
 */
#include "pq_test.h"

#include "../pq_ring.h"

typedef struct ring_fixture {
    uint8_t *base;
    size_t size;
    pq_ring prod; /* the producer's view */
    pq_ring cons; /* the consumer's view */
} ring_fixture;

static int fixture_open(ring_fixture *f, uint64_t cap, uint64_t maxsize)
{
    f->size = pq_ring_segment_size(cap);
    f->base = pq_test_shared(f->size);
    CHECK(f->base != NULL);
    CHECK_EQ(pq_ring_create(f->base, f->size, cap, maxsize, NULL, 0), 0);
    CHECK_EQ(pq_ring_open(&f->prod, f->base, f->size), 0);
    CHECK_EQ(pq_ring_open(&f->cons, f->base, f->size), 0);
    return 0;
}

static void fixture_close(ring_fixture *f)
{
    munmap(f->base, f->size);
}

static uint8_t fill_byte(uint32_t seq, uint32_t i)
{
    return (uint8_t)(seq * 131u + i * 7u + 1u);
}

/* Claim, fill and commit one record; its position in *pos. */
static int put(pq_ring *r, uint32_t len, uint32_t seq, uint8_t type, uint64_t *pos)
{
    uint64_t p;
    int rc = pq_ring_claim(r, &len, 1, &p);
    if (rc < 0)
        return rc;
    uint8_t *d = pq_ring_payload(r, p);
    for (uint32_t i = 0; i < len; i++)
        d[i] = fill_byte(seq, i);
    pq_ring_commit(r, p, type);
    pq_ring_notify_readable(r, 1);
    if (pos)
        *pos = p;
    return 0;
}

static int payload_ok(const pq_ring_record *rec, uint32_t len, uint32_t seq)
{
    if (rec->len != len)
        return 0;
    for (uint32_t i = 0; i < len; i++)
        if (rec->payload[i] != fill_byte(seq, i))
            return 0;
    return 1;
}

/* Take one record and check it is (len, seq, type). */
static int get_one(pq_ring *r, uint32_t len, uint32_t seq, uint8_t type)
{
    pq_ring_record rec;
    pq_ring_batch b;
    int rc;
    do
        rc = pq_ring_peek(r, &rec, 1, &b);
    while (rc == 0 && pq_ring_consume(r, &b) == 0); /* pass padding */
    CHECK_EQ(rc, 1);
    CHECK_EQ(rec.type, type);
    CHECK(payload_ok(&rec, len, seq));
    CHECK_EQ(pq_ring_consume(r, &b), 0);
    return 0;
}

static int test_create_errors(void)
{
    const size_t size = pq_ring_segment_size(8192);
    uint8_t *base = pq_test_shared(size);
    uint64_t user[5] = {7, 8, 9, 10, 11};
    pq_ring r;
    CHECK(base != NULL);
    CHECK_EQ(pq_ring_create(base, size, 6000, 0, NULL, 0), -EINVAL); /* not a power of two */
    CHECK_EQ(pq_ring_create(base, size, 2048, 0, NULL, 0), -EINVAL); /* below the minimum */
    CHECK_EQ(pq_ring_create(base, size, 0, 0, NULL, 0), -EINVAL);
    CHECK_EQ(pq_ring_create(base, size, 16384, 0, NULL, 0), -EINVAL); /* does not fit */
    CHECK_EQ(pq_ring_create(base, size - 1, 8192, 0, NULL, 0), -EINVAL);
    CHECK_EQ(pq_ring_create(base, size, 8192, 0, user, 5), -EINVAL);
    CHECK_EQ(pq_ring_create(base, size, 8192, 0, user, -1), -EINVAL);
    CHECK_EQ(pq_ring_open(&r, base, size), -EAGAIN); /* nothing published */

    CHECK_EQ(pq_ring_create(base, size, 8192, 42, user, 4), 0);
    CHECK_EQ(pq_ring_open(&r, base, size), 0);
    CHECK_EQ(r.capacity, 8192);
    CHECK_EQ(r.mask, 8191);
    CHECK_EQ(r.maxsize, 42);
    CHECK_EQ(r.max_payload, 8192 / 2 - PQ_RECORD_HEADER);
    CHECK_EQ(r.hdr->params[PQ_RING_PARAM_CAPACITY], 8192);
    CHECK_EQ(r.hdr->params[PQ_RING_PARAM_MAXSIZE], 42);
    CHECK_EQ(r.hdr->params[PQ_RING_PARAM_USER0], 7);
    CHECK_EQ(r.hdr->params[PQ_RING_PARAM_USER3], 10);
    CHECK_EQ(pq_ring_head(&r), 0);
    CHECK_EQ(pq_ring_depth(&r), 0);
    CHECK_EQ(pq_ring_record_size(0), 16);
    CHECK_EQ(pq_ring_record_size(1), 32);
    CHECK_EQ(pq_ring_record_size(16), 32);
    CHECK_EQ(pq_ring_record_size(17), 48);
    munmap(base, size);
    return 0;
}

static int test_single_roundtrip(void)
{
    ring_fixture f;
    pq_ring_record rec;
    pq_ring_batch b;
    uint64_t pos;
    uint32_t len = 100;
    if (fixture_open(&f, 4096, 0))
        return 1;
    CHECK_EQ(pq_ring_peek(&f.cons, &rec, 1, &b), -EAGAIN);

    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, &pos), 0);
    CHECK_EQ(pos, 0);
    CHECK(pq_ring_payload(&f.prod, pos) == f.prod.data + PQ_RECORD_HEADER);
    memset(pq_ring_payload(&f.prod, pos), 0xAB, len);
    /* Claimed, not committed: the head is in progress. */
    CHECK_EQ(pq_ring_peek(&f.cons, &rec, 1, &b), -EINPROGRESS);
    CHECK_EQ(pq_ring_depth(&f.cons), 1);
    pq_ring_commit(&f.prod, pos, 9);
    pq_ring_notify_readable(&f.prod, 1);

    CHECK_EQ(pq_ring_peek(&f.cons, &rec, 1, &b), 1);
    CHECK_EQ(rec.pos, 0);
    CHECK_EQ(rec.len, 100);
    CHECK_EQ(rec.type, 9);
    CHECK(rec.payload == f.cons.data + PQ_RECORD_HEADER);
    CHECK(rec.payload[0] == 0xAB && rec.payload[99] == 0xAB);
    CHECK_EQ(b.head, 0);
    CHECK_EQ(b.next, pq_ring_record_size(100));
    CHECK_EQ(b.count, 1);
    CHECK_EQ(b.skipped, 0);
    /* Peeking does not take. */
    CHECK_EQ(pq_ring_peek(&f.cons, &rec, 1, &b), 1);
    CHECK_EQ(pq_ring_consume(&f.cons, &b), 0);
    CHECK_EQ(pq_ring_head(&f.cons), pq_ring_record_size(100));
    CHECK_EQ(pq_ring_peek(&f.cons, &rec, 1, &b), -EAGAIN);
    CHECK_EQ(pq_ring_depth(&f.cons), 0);

    /* A zero-length record. */
    CHECK_EQ(put(&f.prod, 0, 1, 3, NULL), 0);
    CHECK_EQ(get_one(&f.cons, 0, 1, 3), 0);
    fixture_close(&f);
    return 0;
}

static int test_fifo(void)
{
    ring_fixture f;
    pq_ring_record recs[16];
    pq_ring_batch b;
    if (fixture_open(&f, 4096, 0))
        return 1;
    for (uint32_t i = 0; i < 10; i++)
        CHECK_EQ(put(&f.prod, 10 + i * 3, i, (uint8_t)i, NULL), 0);
    /* One at a time, then several at once. */
    for (uint32_t i = 0; i < 4; i++)
        CHECK_EQ(get_one(&f.cons, 10 + i * 3, i, (uint8_t)i), 0);
    CHECK_EQ(pq_ring_peek(&f.cons, recs, 16, &b), 6);
    for (uint32_t i = 0; i < 6; i++) {
        CHECK(payload_ok(&recs[i], 10 + (i + 4) * 3, i + 4));
        CHECK_EQ(recs[i].type, i + 4);
        if (i)
            CHECK(recs[i].pos == recs[i - 1].pos + pq_ring_record_size(recs[i - 1].len));
    }
    CHECK_EQ(pq_ring_consume(&f.cons, &b), 0);
    CHECK_EQ(pq_ring_peek(&f.cons, recs, 16, &b), -EAGAIN);
    fixture_close(&f);
    return 0;
}

/*
 * Padding: payloads of 1500 take 1520 bytes; after two of them (3040) a
 * third does not fit before the end of a 4096-byte ring, so a padding
 * record fills 3040..4096 and the record starts the next lap.
 */
static int test_wrap_padding(void)
{
    ring_fixture f;
    pq_ring_record rec;
    pq_ring_batch b;
    pq_ring_stats st;
    uint64_t pos;
    uint32_t len = 1500;
    if (fixture_open(&f, 4096, 0))
        return 1;
    CHECK_EQ(pq_ring_record_size(len), 1520);
    CHECK_EQ(put(&f.prod, len, 0, 1, &pos), 0);
    CHECK_EQ(pos, 0);
    CHECK_EQ(put(&f.prod, len, 1, 1, &pos), 0);
    CHECK_EQ(pos, 1520);
    /* Full for a third (3040 + 1056 padding + 1520 > 4096 from head 0). */
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, &pos), -EAGAIN);
    CHECK_EQ(get_one(&f.cons, len, 0, 1), 0);
    CHECK_EQ(get_one(&f.cons, len, 1, 1), 0);
    CHECK_EQ(pq_ring_head(&f.cons), 3040);

    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, &pos), 0);
    CHECK_EQ(pos, 4096); /* after the padding, at offset 0 of the next lap */
    CHECK(pq_ring_payload(&f.prod, pos) == f.prod.data + PQ_RECORD_HEADER);
    pq_ring_get_stats(&f.cons, &st);
    CHECK_EQ(st.depth, 1);
    CHECK_EQ(st.depth_bytes, 1056 + 1520);

    /* The padding alone is passable before the record is committed: 0
     * records, but next moved. */
    CHECK_EQ(pq_ring_peek(&f.cons, &rec, 1, &b), 0);
    CHECK_EQ(b.head, 3040);
    CHECK_EQ(b.next, 4096);
    CHECK_EQ(b.count, 0);
    CHECK_EQ(b.skipped, 0);
    CHECK_EQ(pq_ring_consume(&f.cons, &b), 0);
    CHECK_EQ(pq_ring_peek(&f.cons, &rec, 1, &b), -EINPROGRESS);
    uint8_t *d = pq_ring_payload(&f.prod, pos);
    for (uint32_t i = 0; i < len; i++)
        d[i] = fill_byte(2, i);
    pq_ring_commit(&f.prod, pos, 1);
    CHECK_EQ(get_one(&f.cons, len, 2, 1), 0);
    pq_ring_get_stats(&f.cons, &st);
    CHECK_EQ(st.enqueued, 3);
    CHECK_EQ(st.dequeued, 3); /* padding is not a message */
    CHECK_EQ(st.depth, 0);
    CHECK_EQ(st.depth_bytes, 0);

    /* A committed padding + record peeked in one go returns the record. */
    CHECK_EQ(put(&f.prod, len, 3, 1, &pos), 0);
    CHECK_EQ(pos, 5616); /* ends at offset 3040 of this lap */
    CHECK_EQ(get_one(&f.cons, len, 3, 1), 0);
    CHECK_EQ(put(&f.prod, len, 4, 1, &pos), 0); /* pads 7136..8192 */
    CHECK_EQ(pos, 8192);
    CHECK_EQ(pq_ring_peek(&f.cons, &rec, 4, &b), 1);
    CHECK_EQ(b.head, 7136);
    CHECK_EQ(rec.pos, 8192);
    CHECK(payload_ok(&rec, len, 4));
    CHECK_EQ(pq_ring_consume(&f.cons, &b), 0);
    fixture_close(&f);
    return 0;
}

/* Many laps of random sizes, the consumer lagging the producer by a few
 * records: order, contents and the padding count. */
static int test_many_laps(void)
{
    ring_fixture f;
    uint64_t rng = pq_test_seed();
    uint32_t lens[4096];
    uint32_t produced = 0, consumed = 0, paddings = 0;
    uint64_t last_end = 0;
    if (fixture_open(&f, 4096, 0))
        return 1;
    while (consumed < 4000) {
        int want_put = produced < 4000 && (pq_test_rand(&rng) % 3 != 0 || produced == consumed);
        if (want_put) {
            uint32_t len = (uint32_t)(pq_test_rand(&rng) % 900);
            uint64_t pos;
            int rc = put(&f.prod, len, produced, (uint8_t)produced, &pos);
            if (rc == 0) {
                if (pos != last_end) {
                    paddings++;
                    CHECK_EQ(pos & f.prod.mask, 0); /* padding runs to the end */
                }
                last_end = pos + pq_ring_record_size(len);
                lens[produced++ % 4096] = len;
                continue;
            }
            CHECK_EQ(rc, -EAGAIN);
        }
        if (consumed < produced) {
            CHECK_EQ(get_one(&f.cons, lens[consumed % 4096], consumed, (uint8_t)consumed), 0);
            consumed++;
        }
    }
    CHECK(paddings > 10);
    printf("       4000 records over %" PRIu64 " laps, %u paddings\n", last_end / 4096, paddings);
    fixture_close(&f);
    return 0;
}

static int test_maxsize(void)
{
    ring_fixture f;
    uint64_t pos[4];
    uint32_t lens[4] = {8, 8, 8, 8};
    if (fixture_open(&f, 4096, 3))
        return 1;
    for (uint32_t i = 0; i < 3; i++)
        CHECK_EQ(put(&f.prod, 8, i, 0, NULL), 0);
    CHECK_EQ(pq_ring_claim(&f.prod, lens, 1, pos), -EAGAIN);
    CHECK_EQ(pq_ring_depth(&f.prod), 3);
    CHECK_EQ(get_one(&f.cons, 8, 0, 0), 0);
    CHECK_EQ(pq_ring_claim(&f.prod, lens, 2, pos), -EAGAIN); /* 2 + 2 > 3 */
    CHECK_EQ(pq_ring_claim(&f.prod, lens, 1, pos), 0);
    pq_ring_commit(&f.prod, pos[0], 0);
    CHECK_EQ(pq_ring_claim(&f.prod, lens, 1, pos), -EAGAIN);
    /* A batch bigger than maxsize can never fit, but the ring does not
     * know that: -EAGAIN (the binding splits such batches). */
    for (uint32_t i = 1; i < 4; i++) {
        pq_ring_record rec;
        pq_ring_batch b;
        CHECK_EQ(pq_ring_peek(&f.cons, &rec, 1, &b), 1);
        CHECK_EQ(pq_ring_consume(&f.cons, &b), 0);
    }
    CHECK_EQ(pq_ring_depth(&f.prod), 0);
    CHECK_EQ(pq_ring_claim(&f.prod, lens, 4, pos), -EAGAIN);
    CHECK_EQ(pq_ring_claim(&f.prod, lens, 3, pos), 0);
    fixture_close(&f);
    return 0;
}

static int test_full_ring(void)
{
    ring_fixture f;
    uint64_t pos;
    uint32_t len = 240; /* 256 bytes a record: 16 fill the ring exactly */
    if (fixture_open(&f, 4096, 0))
        return 1;
    for (uint32_t i = 0; i < 16; i++)
        CHECK_EQ(put(&f.prod, len, i, 0, NULL), 0);
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, &pos), -EAGAIN);
    uint32_t zero = 0;
    CHECK_EQ(pq_ring_claim(&f.prod, &zero, 1, &pos), -EAGAIN); /* not even 16 bytes */
    pq_ring_stats st;
    pq_ring_get_stats(&f.prod, &st);
    CHECK_EQ(st.depth_bytes, 4096);
    CHECK_EQ(st.depth, 16);
    /* One out, one in: the producer's view notices head moved. */
    CHECK_EQ(get_one(&f.cons, len, 0, 0), 0);
    CHECK_EQ(put(&f.prod, len, 16, 0, &pos), 0);
    CHECK_EQ(pos, 4096);
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, &pos), -EAGAIN);
    for (uint32_t i = 1; i <= 16; i++)
        CHECK_EQ(get_one(&f.cons, len, i, 0), 0);
    /* Empty again: a whole ring's worth in one batch is too big (> half),
     * half of it fits. */
    uint32_t lens[16];
    uint64_t poss[16];
    for (int i = 0; i < 16; i++)
        lens[i] = 240;
    CHECK_EQ(pq_ring_claim(&f.prod, lens, 16, poss), -EMSGSIZE);
    CHECK_EQ(pq_ring_claim(&f.prod, lens, 8, poss), 0);
    fixture_close(&f);
    return 0;
}

static int test_oversize(void)
{
    ring_fixture f;
    uint64_t pos[3];
    if (fixture_open(&f, 4096, 0))
        return 1;
    uint32_t max = (uint32_t)f.prod.max_payload;
    CHECK_EQ(max, 2032);
    uint32_t len = max + 1;
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, pos), -EMSGSIZE);
    len = UINT32_MAX;
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, pos), -EMSGSIZE);
    uint32_t lens3[3] = {1000, 1000, 100}; /* 1024 + 1024 + 128 > 2048 */
    CHECK_EQ(pq_ring_claim(&f.prod, lens3, 3, pos), -EMSGSIZE);
    uint32_t lens2[2] = {1000, max + 1};
    CHECK_EQ(pq_ring_claim(&f.prod, lens2, 2, pos), -EMSGSIZE);
    /* Bad arguments. */
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 0, pos), -EINVAL);
    CHECK_EQ(pq_ring_claim(&f.prod, NULL, 1, pos), -EINVAL);
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, NULL), -EINVAL);

    /* The largest record (cap/2 bytes) fits an empty ring wherever head
     * is, even where it needs a padding record of almost its size first
     * (head at 2064: 2032 of padding + 2048 = 4080 <= 4096). */
    static const uint32_t targets[] = {0, 16, 2032, 2048, 2064, 2080, 4064, 4080, 592, 3008};
    for (size_t k = 0; k < sizeof targets / sizeof targets[0]; k++) {
        /* Move head to offset targets[k] with one or two records. */
        for (int step = 0; step < 4; step++) {
            uint64_t off = pq_ring_head(&f.prod) & f.prod.mask;
            uint64_t adv = (targets[k] - off) & f.prod.mask;
            if (adv == 0)
                break;
            if (adv > 2048)
                adv = 2048;
            if (adv > 4096 - off) /* no padding for the moving records */
                adv = 4096 - off;
            if (adv < 16) /* cannot happen: offsets are multiples of 16 */
                CHECK(0);
            CHECK_EQ(put(&f.prod, (uint32_t)adv - 16, 0, 0, NULL), 0);
            CHECK_EQ(get_one(&f.cons, (uint32_t)adv - 16, 0, 0), 0);
        }
        CHECK_EQ(pq_ring_head(&f.prod) & f.prod.mask, targets[k]);
        len = max;
        CHECK_EQ(put(&f.prod, len, 7, 0, pos), 0);
        if (targets[k] + 2048 > 4096)
            CHECK_EQ(pos[0] & f.prod.mask, 0); /* after a padding record */
        else
            CHECK_EQ(pos[0] & f.prod.mask, targets[k]);
        CHECK_EQ(get_one(&f.cons, len, 7, 0), 0);
    }
    fixture_close(&f);
    return 0;
}

static int test_batch_claim(void)
{
    ring_fixture f;
    uint32_t lens[5] = {10, 20, 0, 40, 300};
    uint64_t pos[5];
    pq_ring_record recs[8];
    pq_ring_batch b;
    if (fixture_open(&f, 4096, 0))
        return 1;
    CHECK_EQ(pq_ring_claim(&f.prod, lens, 5, pos), 0);
    CHECK_EQ(pos[0], 0);
    for (int i = 1; i < 5; i++)
        CHECK_EQ(pos[i], pos[i - 1] + pq_ring_record_size(lens[i - 1]));
    CHECK_EQ(pq_ring_depth(&f.cons), 5);
    /* Commit back to front: nothing readable until the first is. */
    for (int i = 4; i >= 1; i--) {
        uint8_t *d = pq_ring_payload(&f.prod, pos[i]);
        for (uint32_t k = 0; k < lens[i]; k++)
            d[k] = fill_byte((uint32_t)i, k);
        pq_ring_commit(&f.prod, pos[i], (uint8_t)(i + 100));
        CHECK_EQ(pq_ring_peek(&f.cons, recs, 8, &b), -EINPROGRESS);
    }
    uint8_t *d = pq_ring_payload(&f.prod, pos[0]);
    for (uint32_t k = 0; k < lens[0]; k++)
        d[k] = fill_byte(0, k);
    pq_ring_commit(&f.prod, pos[0], 100);
    pq_ring_notify_readable(&f.prod, 5);

    /* max limits the batch. */
    CHECK_EQ(pq_ring_peek(&f.cons, recs, 2, &b), 2);
    CHECK_EQ(b.next, pos[2]);
    CHECK_EQ(pq_ring_peek(&f.cons, recs, 8, &b), 5);
    for (int i = 0; i < 5; i++) {
        CHECK_EQ(recs[i].pos, pos[i]);
        CHECK_EQ(recs[i].type, i + 100);
        CHECK(payload_ok(&recs[i], lens[i], (uint32_t)i));
    }
    CHECK_EQ(b.next, pos[4] + pq_ring_record_size(300));
    CHECK_EQ(pq_ring_consume(&f.cons, &b), 0);
    CHECK_EQ(pq_ring_depth(&f.cons), 0);

    /* A batch stops at a record still being written. */
    CHECK_EQ(pq_ring_claim(&f.prod, lens, 3, pos), 0);
    pq_ring_commit(&f.prod, pos[0], 1);
    pq_ring_commit(&f.prod, pos[2], 3);
    CHECK_EQ(pq_ring_peek(&f.cons, recs, 8, &b), 1);
    CHECK_EQ(b.next, pos[1]);
    CHECK_EQ(pq_ring_consume(&f.cons, &b), 0);
    CHECK_EQ(pq_ring_peek(&f.cons, recs, 8, &b), -EINPROGRESS);
    pq_ring_commit(&f.prod, pos[1], 2);
    CHECK_EQ(pq_ring_peek(&f.cons, recs, 8, &b), 2);
    CHECK_EQ(pq_ring_consume(&f.cons, &b), 0);

    /* A batch that wraps gets one padding record and stays in order. */
    uint64_t h = pq_ring_head(&f.prod);
    uint32_t fill = (uint32_t)(4096 - (h & 4095) - 16 - 64); /* leave 64 bytes before the end */
    if (fill > f.prod.max_payload) {
        /* one more record to get closer */
        uint32_t half = fill / 2;
        CHECK_EQ(put(&f.prod, half, 0, 0, NULL), 0);
        CHECK_EQ(get_one(&f.cons, half, 0, 0), 0);
        h = pq_ring_head(&f.prod);
        fill = (uint32_t)(4096 - (h & 4095) - 16 - 64);
    }
    CHECK_EQ(put(&f.prod, fill, 0, 0, NULL), 0);
    CHECK_EQ(get_one(&f.cons, fill, 0, 0), 0);
    uint32_t wl[3] = {16, 100, 16}; /* 32 + 128: the second does not fit in 64 - 32 */
    CHECK_EQ(pq_ring_claim(&f.prod, wl, 3, pos), 0);
    CHECK_EQ(pos[1] - pos[0], 32 + 32); /* a 32-byte padding between */
    CHECK_EQ(pos[1] & 4095, 0);
    for (int i = 0; i < 3; i++) {
        d = pq_ring_payload(&f.prod, pos[i]);
        for (uint32_t k = 0; k < wl[i]; k++)
            d[k] = fill_byte((uint32_t)i + 50, k);
        pq_ring_commit(&f.prod, pos[i], 0);
    }
    CHECK_EQ(pq_ring_peek(&f.cons, recs, 8, &b), 3);
    for (int i = 0; i < 3; i++)
        CHECK(payload_ok(&recs[i], wl[i], (uint32_t)i + 50));
    CHECK_EQ(pq_ring_consume(&f.cons, &b), 0);
    fixture_close(&f);
    return 0;
}

static int test_stale_batch(void)
{
    ring_fixture f;
    pq_ring other;
    pq_ring_record r1, r2;
    pq_ring_batch b1, b2;
    if (fixture_open(&f, 4096, 0))
        return 1;
    CHECK_EQ(pq_ring_open(&other, f.base, f.size), 0);
    CHECK_EQ(put(&f.prod, 50, 0, 0, NULL), 0);
    CHECK_EQ(put(&f.prod, 50, 1, 0, NULL), 0);
    /* Two consumers look at the same head; the second to consume loses. */
    CHECK_EQ(pq_ring_peek(&f.cons, &r1, 1, &b1), 1);
    CHECK_EQ(pq_ring_peek(&other, &r2, 1, &b2), 1);
    CHECK(b1.head == b2.head && b1.next == b2.next);
    CHECK_EQ(pq_ring_consume(&f.cons, &b1), 0);
    CHECK_EQ(pq_ring_consume(&other, &b2), -EAGAIN);
    CHECK_EQ(pq_ring_consume(&f.cons, &b1), -EAGAIN); /* not twice either */
    /* The loser peeks again and gets the next record. */
    CHECK_EQ(pq_ring_peek(&other, &r2, 1, &b2), 1);
    CHECK(payload_ok(&r2, 50, 1));
    CHECK_EQ(pq_ring_consume(&other, &b2), 0);
    CHECK_EQ(pq_ring_depth(&f.cons), 0);
    pq_ring_stats st;
    pq_ring_get_stats(&f.cons, &st);
    CHECK_EQ(st.dequeued, 2);
    fixture_close(&f);
    return 0;
}

static int test_stats(void)
{
    ring_fixture f;
    pq_ring_stats st;
    if (fixture_open(&f, 8192, 10))
        return 1;
    pq_ring_get_stats(&f.prod, &st);
    CHECK(st.enqueued == 0 && st.dequeued == 0 && st.depth == 0 && st.depth_bytes == 0);
    CHECK_EQ(st.capacity, 8192);
    CHECK_EQ(st.maxsize, 10);
    CHECK(st.rejected == 0 && st.dropped == 0 && st.abandoned == 0);
    CHECK(st.waiting_producers == 0 && st.waiting_consumers == 0);

    CHECK_EQ(put(&f.prod, 100, 0, 0, NULL), 0);
    CHECK_EQ(put(&f.prod, 200, 1, 0, NULL), 0);
    CHECK_EQ(put(&f.prod, 300, 2, 0, NULL), 0);
    pq_ring_get_stats(&f.cons, &st);
    CHECK_EQ(st.enqueued, 3);
    CHECK_EQ(st.dequeued, 0);
    CHECK_EQ(st.depth, 3);
    CHECK_EQ(st.depth_bytes, pq_ring_record_size(100) + pq_ring_record_size(200) + pq_ring_record_size(300));
    CHECK_EQ(pq_ring_depth(&f.cons), 3);

    CHECK_EQ(get_one(&f.cons, 100, 0, 0), 0);
    pq_ring_get_stats(&f.cons, &st);
    CHECK_EQ(st.enqueued, 3);
    CHECK_EQ(st.dequeued, 1);
    CHECK_EQ(st.depth, 2);
    CHECK_EQ(st.depth_bytes, pq_ring_record_size(200) + pq_ring_record_size(300));

    /* The binding's counters: a rejected put, a dropped message (taken
     * by consume, counted as dropped: not dequeued). */
    pq_ring_count(&f.prod, PQ_COUNT_REJECTED, 2);
    CHECK_EQ(get_one(&f.prod, 200, 1, 0), 0);
    pq_ring_count(&f.prod, PQ_COUNT_DROPPED, 1);
    pq_ring_get_stats(&f.cons, &st);
    CHECK_EQ(st.rejected, 2);
    CHECK_EQ(st.dropped, 1);
    CHECK_EQ(st.enqueued, 3);
    CHECK_EQ(st.dequeued, 1);
    CHECK_EQ(st.depth, 1);
    CHECK_EQ(st.abandoned, 0);
    fixture_close(&f);
    return 0;
}

static int test_tasks(void)
{
    ring_fixture f;
    pq_ring_stats st;
    if (fixture_open(&f, 4096, 0))
        return 1;
    CHECK_EQ(pq_ring_task_done(&f.prod), -EINVAL); /* none unfinished */
    CHECK_EQ(pq_ring_wait_tasks_done(&f.prod, pq_monotonic_ns() + 1000000000LL), 0);

    pq_ring_tasks_add(&f.prod, 2);
    pq_ring_get_stats(&f.prod, &st);
    CHECK_EQ(st.unfinished_tasks, 2);
    CHECK_EQ(pq_ring_task_done(&f.cons), 0);
    /* One left: the wait times out at its deadline. */
    int64_t t0 = pq_monotonic_ns();
    CHECK_EQ(pq_ring_wait_tasks_done(&f.prod, t0 + 30000000), -ETIMEDOUT);
    int64_t elapsed = pq_monotonic_ns() - t0;
    CHECK(elapsed >= 30000000 && elapsed < 30000000 + 400000000LL);
    CHECK_EQ(pq_ring_task_done(&f.cons), 0);
    CHECK_EQ(pq_ring_task_done(&f.cons), -EINVAL);
    CHECK_EQ(pq_ring_wait_tasks_done(&f.prod, pq_monotonic_ns() + 1000000000LL), 0);

    /* A child finishes the task while the parent waits. */
    pq_ring_tasks_add(&f.prod, 1);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_ring r;
        CHILD_CHECK(pq_ring_open(&r, f.base, f.size) == 0);
        pq_test_sleep_ms(30);
        CHILD_CHECK(pq_ring_task_done(&r) == 0);
        _exit(0);
    }
    t0 = pq_monotonic_ns();
    CHECK_EQ(pq_ring_wait_tasks_done(&f.prod, t0 + 10000000000LL), 0);
    CHECK(pq_monotonic_ns() - t0 < 5000000000LL);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    pq_ring_get_stats(&f.prod, &st);
    CHECK_EQ(st.unfinished_tasks, 0);
    fixture_close(&f);
    return 0;
}

/* The shared flag starts clear, is seen by every view once set, and a
 * fresh segment over the same memory starts clear again. */
static int test_shared_flag(void)
{
    ring_fixture f;
    if (fixture_open(&f, 4096, 0))
        return 1;
    CHECK_EQ(pq_ring_is_shared(&f.prod), 0);
    CHECK_EQ(pq_ring_is_shared(&f.cons), 0);
    pq_ring_mark_shared(&f.cons);
    CHECK_EQ(pq_ring_is_shared(&f.prod), 1);
    pq_ring_mark_shared(&f.prod); /* idempotent */
    CHECK_EQ(pq_ring_is_shared(&f.cons), 1);
    fixture_close(&f);
    return 0;
}

static int test_waits(void)
{
    ring_fixture f;
    uint64_t pos;
    uint32_t len = 240;
    if (fixture_open(&f, 4096, 0))
        return 1;
    /* Empty: readable wait times out (spinning first, then parked). */
    int64_t t0 = pq_monotonic_ns();
    CHECK_EQ(pq_ring_wait_readable(&f.cons, t0 + 20000000, 100), -ETIMEDOUT);
    CHECK(pq_monotonic_ns() - t0 >= 20000000);
    /* Claimed only: still not readable. */
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, &pos), 0);
    CHECK_EQ(pq_ring_wait_readable(&f.cons, pq_monotonic_ns() + 10000000, 0), -ETIMEDOUT);
    pq_ring_commit(&f.prod, pos, 0);
    CHECK_EQ(pq_ring_wait_readable(&f.cons, pq_monotonic_ns() + 1000000000LL, 0), 0);
    CHECK_EQ(pq_ring_wait_readable(&f.cons, pq_monotonic_ns() + 1000000000LL, 10), 0);

    /* Fill the ring; writable waits for head to move. */
    while (put(&f.prod, len, 0, 0, NULL) == 0)
        ;
    uint64_t seen = pq_ring_head(&f.prod);
    t0 = pq_monotonic_ns();
    CHECK_EQ(pq_ring_wait_writable(&f.prod, seen, t0 + 20000000, 50), -ETIMEDOUT);
    CHECK(pq_monotonic_ns() - t0 >= 20000000);
    pq_ring_record rec;
    pq_ring_batch b;
    CHECK_EQ(pq_ring_peek(&f.cons, &rec, 1, &b), 1);
    CHECK_EQ(pq_ring_consume(&f.cons, &b), 0);
    CHECK_EQ(pq_ring_wait_writable(&f.prod, seen, pq_monotonic_ns() + 1000000000LL, 0), 0);

    /* A parked consumer in a child is woken by a commit here. */
    while (pq_ring_peek(&f.cons, &rec, 1, &b) >= 0)
        CHECK_EQ(pq_ring_consume(&f.cons, &b), 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_ring r;
        CHILD_CHECK(pq_ring_open(&r, f.base, f.size) == 0);
        int64_t c0 = pq_monotonic_ns();
        int rc;
        while ((rc = pq_ring_peek(&r, &rec, 1, &b)) < 0) {
            CHILD_CHECK(rc == -EAGAIN);
            CHILD_CHECK(pq_ring_wait_readable(&r, c0 + 10000000000LL, 0) == 0);
        }
        CHILD_CHECK(pq_ring_consume(&r, &b) == 0);
        CHILD_CHECK(pq_monotonic_ns() - c0 < 5000000000LL);
        _exit(0);
    }
    t0 = pq_monotonic_ns();
    while (pq_event_waiters(&f.prod.ctl->readable) == 0 && pq_monotonic_ns() - t0 < 5000000000LL)
        pq_test_sleep_ms(1);
    pq_ring_stats st;
    pq_ring_get_stats(&f.prod, &st);
    CHECK_EQ(st.waiting_consumers, 1);
    CHECK_EQ(put(&f.prod, 10, 0, 0, NULL), 0);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    fixture_close(&f);
    return 0;
}

/*
 * The maxsize wake-up window: a consumer moves head (its CAS) before it
 * counts the message out (head_msgs). A producer that reads the new head
 * and then fails its claim on the old count must still be woken by the
 * count: the consumer's notify found nobody waiting yet. The consumer's
 * two steps are done by hand here to hold the window open.
 */
static int test_maxsize_wakeup_window(void)
{
    ring_fixture f;
    pq_ring_record rec;
    pq_ring_batch b;
    uint64_t pos;
    uint32_t len = 8;
    if (fixture_open(&f, 4096, 1))
        return 1;
    CHECK_EQ(put(&f.prod, len, 0, 0, NULL), 0);

    /* Consumer, first half: the CAS on head. */
    CHECK_EQ(pq_ring_peek(&f.cons, &rec, 1, &b), 1);
    uint64_t expected = b.head;
    CHECK(atomic_compare_exchange_strong(&f.cons.ctl->head, &expected, b.next));

    /* Producer: sees the new head, fails on the old count. */
    uint64_t seen = pq_ring_head(&f.prod);
    CHECK_EQ(seen, b.next);
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, &pos), -EAGAIN);

    /* Consumer, second half: count and notify (nobody waits yet). */
    atomic_fetch_add(&f.cons.ctl->head_msgs, 1);
    pq_event_notify(&f.cons.ctl->writable, INT32_MAX);

    /* Producer: must not sleep to its deadline. */
    int64_t t0 = pq_monotonic_ns();
    CHECK_EQ(pq_ring_wait_writable(&f.prod, seen, t0 + 300000000, 0), 0);
    CHECK(pq_monotonic_ns() - t0 < 100000000);
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, &pos), 0);
    pq_ring_commit(&f.prod, pos, 0);

    /* And the wait still sleeps when nothing changed: a claim that fails
     * on maxsize with an up-to-date count ... */
    seen = pq_ring_head(&f.prod);
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, &pos), -EAGAIN);
    t0 = pq_monotonic_ns();
    CHECK_EQ(pq_ring_wait_writable(&f.prod, seen, t0 + 20000000, 10), -ETIMEDOUT);
    CHECK(pq_monotonic_ns() - t0 >= 20000000);
    fixture_close(&f);

    /* ... and one that fails on bytes after an earlier maxsize failure
     * (the maxsize snapshot must not make it return at once). */
    if (fixture_open(&f, 4096, 100))
        return 1;
    len = 240;
    while (put(&f.prod, len, 0, 0, NULL) == 0)
        ;
    CHECK_EQ(pq_ring_depth(&f.prod), 16);
    pq_ring fake_full = f.prod;
    fake_full.maxsize = 16; /* a view that fails on the count */
    CHECK_EQ(pq_ring_claim(&fake_full, &len, 1, &pos), -EAGAIN);
    atomic_fetch_add(&f.prod.ctl->head_msgs, 0); /* (no change) */
    seen = pq_ring_head(&f.prod);
    CHECK_EQ(pq_ring_claim(&f.prod, &len, 1, &pos), -EAGAIN); /* bytes */
    atomic_fetch_add(&f.prod.ctl->head_msgs, 1); /* a count change alone */
    t0 = pq_monotonic_ns();
    CHECK_EQ(pq_ring_wait_writable(&f.prod, seen, t0 + 20000000, 10), -ETIMEDOUT);
    atomic_fetch_sub(&f.prod.ctl->head_msgs, 1);
    fixture_close(&f);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("test_ring\n");
    RUN(test_create_errors);
    RUN(test_single_roundtrip);
    RUN(test_fifo);
    RUN(test_wrap_padding);
    RUN(test_many_laps);
    RUN(test_maxsize);
    RUN(test_full_ring);
    RUN(test_oversize);
    RUN(test_batch_claim);
    RUN(test_stale_batch);
    RUN(test_stats);
    RUN(test_tasks);
    RUN(test_shared_flag);
    RUN(test_waits);
    RUN(test_maxsize_wakeup_window);
    return pq_test_result();
}
