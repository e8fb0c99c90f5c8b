/* test_log_refs.c - large records of the memory-mode log: the references
 * of the out-of-band records that retention drops are reported
 * (pq_log_append_refs, pq_log_expire_refs), the retained ones listed
 * (pq_log_scan_refs). docs/design.md, "Log: large records". */
#include "pq_test.h"

#include "../pq_log.h"
#include "../pq_record.h"

#define OOB (PQ_TYPE_OOB | 1u)

static void *make_log(uint64_t cap, uint64_t retention_ms, pq_log *l)
{
    size_t size = pq_log_segment_size(1, cap);
    void *base = size ? pq_test_shared(size) : NULL;
    if (base == NULL || pq_log_create(base, size, 1, cap, retention_ms, 0) != 0 ||
        pq_log_open(l, base, size) != 0)
        return NULL;
    return base;
}

/* Append one record: value "ref-<n>" padded with zeros to pad bytes, of
 * type typ (OOB: an out-of-band reference), at timestamp ts. */
static int append_ref(pq_log *l, uint32_t n, uint32_t pad, uint8_t typ, uint64_t ts,
                      pq_refs *refs, uint64_t *off)
{
    uint8_t buf[1024] = {0};
    int len = snprintf((char *)buf, sizeof buf, "ref-%u", n);
    if (pad < (uint32_t)len)
        pad = (uint32_t)len;
    pq_log_entry e = {.key = "key", .key_len = 3, .headers = "hh", .headers_len = 2,
                      .value = buf, .value_len = pad, .type = typ};
    return pq_log_append_refs(l, 0, &e, 1, ts, off, refs);
}

/* append_ref as the binding appends: a report of dropped out-of-band
 * records (-ENOBUFS: a pending reclaim) is followed by the same append
 * again, with refs->reclaim as the core set it (their segments unlinked,
 * in the binding); refs collects every reference reported. */
static int append_retry(pq_log *l, uint32_t n, uint32_t pad, uint8_t typ, uint64_t ts,
                        pq_refs *refs, uint64_t *off)
{
    int rc, turns = 0;
    while ((rc = append_ref(l, n, pad, typ, ts, refs, off)) == -ENOBUFS && ++turns < 100)
        ;
    return rc;
}

/* The n of a reported reference "ref-<n>" (its padding after it), or -1. */
static long ref_number(const pq_ref *r)
{
    char s[32] = {0};
    uint32_t n = r->len < sizeof s - 1 ? r->len : (uint32_t)sizeof s - 1;
    memcpy(s, r->bytes, n);
    if (strncmp(s, "ref-", 4) != 0)
        return -1;
    return strtol(s + 4, NULL, 10);
}

/* Every out-of-band record that size retention drops is reported once, in
 * order, with its whole value; the plain ones never; the retained ones
 * are what the scan lists. */
static int test_size_retention_reports_each_dropped_reference(void)
{
    pq_log l;
    CHECK(make_log(4096, 0, &l) != NULL);
    pq_ref items[16];
    pq_refs refs = {items, 16, 0, 0};
    long next_reported = 0; /* OOB records are the even n */
    uint64_t off;
    for (uint32_t n = 0; n < 400; n++) {
        refs.count = 0;
        CHECK_EQ(append_retry(&l, n, 40 + (n % 7) * 16, n % 2 == 0 ? OOB : 1, 1, &refs, &off),
                 0);
        CHECK_EQ(off, n);
        for (uint32_t i = 0; i < refs.count; i++) {
            CHECK_EQ(ref_number(&items[i]), next_reported);
            CHECK(items[i].len >= 40); /* the value with its padding */
            next_reported += 2;
        }
    }
    uint64_t start, end;
    CHECK_EQ(pq_log_bounds(&l, 0, &start, &end), 0);
    CHECK_EQ(end, 400);
    CHECK(start > 100);
    /* Reported: exactly the OOB records below the start. */
    CHECK_EQ(next_reported, (long)((start + 1) / 2 * 2));
    /* Listed: exactly the OOB records retained, in pages of 3. */
    pq_ref page[3];
    pq_refs scan = {page, 3, 0, 0};
    uint64_t from = 0;
    long expect = next_reported;
    for (int turns = 0;; turns++) {
        CHECK(turns < 100);
        scan.count = 0;
        int rc = pq_log_scan_refs(&l, 0, &from, &scan);
        CHECK(rc == 0 || rc == 1);
        for (uint32_t i = 0; i < scan.count; i++) {
            CHECK_EQ(ref_number(&page[i]), expect);
            expect += 2;
        }
        if (rc == 0)
            break;
        CHECK_EQ(scan.count, 3);
    }
    CHECK_EQ(expect, 400);
    return 0;
}

/* Without a buffer (pq_log_append) nothing is reported and nothing
 * changes: the start moves as before. */
static int test_no_buffer_drops_as_before(void)
{
    pq_log l;
    CHECK(make_log(4096, 0, &l) != NULL);
    uint64_t off, start, end;
    for (uint32_t n = 0; n < 100; n++)
        CHECK_EQ(append_ref(&l, n, 100, OOB, 1, NULL, &off), 0);
    CHECK_EQ(pq_log_bounds(&l, 0, &start, &end), 0);
    CHECK(start > 0);
    CHECK_EQ(end, 100);
    return 0;
}

/* A buffer too small for what one append drops: -ENOBUFS, the start moved
 * past the records reported and no further, nothing appended; appending
 * again goes on from there, and no reference is lost or reported twice. */
static int test_full_buffer_stops_at_the_first_not_reported(void)
{
    pq_log l;
    CHECK(make_log(4096, 0, &l) != NULL);
    uint64_t off, start, end;
    /* Fill the ring with small OOB records (80 bytes each: ~51 of them). */
    uint32_t n = 0;
    for (;; n++) {
        CHECK_EQ(append_ref(&l, n, 24, OOB, 1, NULL, &off), 0);
        CHECK_EQ(pq_log_bounds(&l, 0, &start, &end), 0);
        if (start > 0)
            break;
    }
    /* Restart from a known state: the start is at `start`. A large plain
     * record (900 bytes) must drop about 12 of them. */
    pq_ref items[2];
    pq_refs refs = {items, 2, 0, 0};
    long expect = (long)start;
    int enobufs = 0;
    for (int turns = 0;; turns++) {
        CHECK(turns < 64);
        refs.count = 0;
        uint64_t s0;
        CHECK_EQ(pq_log_bounds(&l, 0, &s0, &end), 0);
        int rc = append_ref(&l, 100000, 900, 1, 1, &refs, &off);
        for (uint32_t i = 0; i < refs.count; i++)
            CHECK_EQ(ref_number(&items[i]), expect++);
        if (rc == -ENOBUFS) {
            enobufs++;
            CHECK(refs.count == 1 || refs.count == 2);
            CHECK_EQ(pq_log_bounds(&l, 0, &start, &end), 0);
            CHECK_EQ(start, s0 + refs.count); /* past the ones reported, no further */
            CHECK_EQ(end, n + 1);    /* nothing appended */
            continue;
        }
        CHECK_EQ(rc, 0);
        CHECK_EQ(off, n + 1);
        break;
    }
    CHECK(enobufs >= 5);
    CHECK_EQ(pq_log_bounds(&l, 0, &start, &end), 0);
    CHECK_EQ((long)start, expect); /* every record dropped was reported */
    return 0;
}

/* Retention by age: the expiry reports what it drops; a full buffer means
 * "call again", and the records not reported stay. */
static int test_expiry_reports_and_pages(void)
{
    pq_log l;
    CHECK(make_log(65536, 1000, &l) != NULL);
    uint64_t off, start, end;
    for (uint32_t n = 0; n < 10; n++)
        CHECK_EQ(append_ref(&l, n, 32, n % 2 ? 1 : OOB, 5000 + n, NULL, &off), 0);
    CHECK_EQ(append_ref(&l, 10, 32, OOB, 6000, NULL, &off), 0);
    pq_ref items[2];
    pq_refs refs = {items, 2, 0, 0};
    /* now 6500: records older than 5500 go (offsets 0..9, 5 of them OOB). */
    long expect = 0;
    int dropped = 0, calls = 0;
    for (;;) {
        CHECK(calls++ < 10);
        refs.count = 0;
        int rc = pq_log_expire_refs(&l, 0, 6500, &refs);
        CHECK(rc >= 0);
        dropped += rc;
        for (uint32_t i = 0; i < refs.count; i++) {
            CHECK_EQ(ref_number(&items[i]), expect);
            expect += 2;
        }
        CHECK_EQ(pq_log_bounds(&l, 0, &start, &end), 0);
        if (refs.count < refs.max)
            break;
        /* Stopped at the first record not reported: the next OOB one. */
        CHECK_EQ((long)start, expect);
    }
    CHECK_EQ(dropped, 10);
    CHECK_EQ(expect, 10);
    CHECK_EQ(start, 10);
    /* The one retained is listed. */
    pq_refs scan = {items, 2, 0, 0};
    uint64_t from = 0;
    CHECK_EQ(pq_log_scan_refs(&l, 0, &from, &scan), 0);
    CHECK_EQ(scan.count, 1);
    CHECK_EQ(ref_number(&items[0]), 10);
    return 0;
}

/* A committed OOB record whose key length was damaged is dropped without
 * a report (it names nothing a reader could map) and is not listed: no
 * crash, no stuck partition, the others are reported. */
static int test_damaged_reference_record(void)
{
    pq_log l;
    void *base = make_log(4096, 0, &l);
    CHECK(base != NULL);
    uint64_t off, start, end;
    CHECK_EQ(append_ref(&l, 0, 32, OOB, 1, NULL, &off), 0);
    CHECK_EQ(append_ref(&l, 1, 32, OOB, 1, NULL, &off), 0);
    /* Record 0 is at data position 0: its log header's key_len. */
    uint8_t *data = (uint8_t *)base + PQ_LOG_PARTS_OFFSET + sizeof(pq_log_part) +
                    pq_log_index_entries(4096) * sizeof(pq_log_index_entry);
    uint32_t bad = 0x7fffffff;
    memcpy(data + PQ_RECORD_HEADER + 16, &bad, sizeof bad);
    pq_ref items[4];
    pq_refs scan = {items, 4, 0, 0};
    uint64_t from = 0;
    CHECK_EQ(pq_log_scan_refs(&l, 0, &from, &scan), 0);
    CHECK_EQ(scan.count, 1);
    CHECK_EQ(ref_number(&items[0]), 1);
    pq_refs refs = {items, 4, 0, 0};
    for (uint32_t n = 2; n < 60; n++)
        CHECK_EQ(append_retry(&l, n, 100, 1, 1, &refs, &off), 0);
    CHECK_EQ(pq_log_bounds(&l, 0, &start, &end), 0);
    CHECK(start > 2);
    CHECK_EQ(refs.count, 1);
    CHECK_EQ(ref_number(&items[0]), 1);
    return 0;
}

static int test_bad_arguments(void)
{
    pq_log l;
    CHECK(make_log(4096, 1000, &l) != NULL);
    pq_ref items[1];
    pq_refs refs = {items, 1, 2, 0}; /* count over max */
    uint64_t off, from = 0;
    CHECK_EQ(append_ref(&l, 0, 32, OOB, 1, &refs, &off), -EINVAL);
    CHECK_EQ(pq_log_expire_refs(&l, 0, 5000, &refs), -EINVAL);
    CHECK_EQ(pq_log_scan_refs(&l, 0, &from, &refs), -EINVAL);
    refs.count = 0;
    CHECK_EQ(pq_log_scan_refs(&l, 1, &from, &refs), -EINVAL);
    CHECK_EQ(pq_log_scan_refs(&l, 0, NULL, &refs), -EINVAL);
    return 0;
}

/* A reported drop stays a pending reclaim until its caller comes back
 * with the token: another appender (or an expiry) is given the same
 * references, the records are not overwritten meanwhile, and the token
 * ends it. */
static int test_pending_reclaim_reported_until_done(void)
{
    pq_log l2;
    uint64_t off, start, end;
    CHECK(make_log(4096, 1000, &l2) != NULL);
    /* 40 records of 80 bytes (the ring holds 51): record 0 out of band. */
    for (uint32_t n = 0; n < 40; n++)
        CHECK_EQ(append_ref(&l2, n, 24, n == 0 ? OOB : 1, 5000, NULL, &off), 0);
    pq_ref a_items[4], b_items[4];
    pq_refs a = {a_items, 4, 0, 0}, b = {b_items, 4, 0, 0};
    /* What a holder that died announcing a reclaim, before the start
     * moved, leaves: dropped quietly (not taken for damage). */
    pq_log_part *pt = (pq_log_part *)l2.parts_base;
    pt->reclaim.from = pt->start_pos;
    pt->reclaim.to = pt->start_pos + 80;
    CHECK_EQ(pq_log_expire_refs(&l2, 0, 5500, &a), 0);
    CHECK_EQ(a.count, 0u);
    CHECK_EQ(pt->reclaim.to, 0u);
    /* A large plain record needs the oldest ones' room: reported to a. */
    CHECK_EQ(append_ref(&l2, 1000, 900, 1, 5000, &a, &off), -ENOBUFS);
    CHECK_EQ(a.count, 1u);
    CHECK_EQ(ref_number(&a_items[0]), 0);
    const uint64_t token = a.reclaim;
    CHECK(token != 0);
    CHECK_EQ(pq_log_bounds(&l2, 0, &start, &end), 0);
    CHECK(start > 0 && end == 40); /* past it (and the plain ones up to the room) */
    /* a never comes back: b's append and an expiry get it again. */
    CHECK_EQ(append_ref(&l2, 1001, 24, 1, 5000, &b, &off), -ENOBUFS);
    CHECK_EQ(b.count, 1u);
    CHECK_EQ(ref_number(&b_items[0]), 0);
    CHECK_EQ(b.reclaim, token);
    b.count = 0;
    b.reclaim = 0;
    CHECK_EQ(pq_log_expire_refs(&l2, 0, 5500, &b), 0);
    CHECK_EQ(b.count, 1u);
    CHECK_EQ(b.reclaim, token);
    pq_refs tiny = {b_items, 1, 1, 0};
    CHECK_EQ(append_ref(&l2, 1001, 24, 1, 5000, &tiny, &off), -EINVAL);
    /* Back with the token: it ends, the append goes in. */
    b.count = 0;
    CHECK_EQ(append_ref(&l2, 1001, 24, 1, 5000, &b, &off), 0);
    CHECK_EQ(b.count, 0u);
    CHECK_EQ(b.reclaim, 0u);
    CHECK_EQ(off, 40u);
    /* Damage: a range older than the ring is dropped, once, as corruption. */
    pt->reclaim.from = pt->start_pos - 2 * 4096;
    pt->reclaim.to = pt->start_pos;
    b.count = 0;
    CHECK_EQ(append_ref(&l2, 1002, 24, 1, 5000, &b, &off), PQ_ERR_CORRUPT);
    CHECK_EQ(append_ref(&l2, 1002, 24, 1, 5000, &b, &off), 0);
    /* a stale token ends nothing (and nothing is pending). */
    CHECK_EQ(append_ref(&l2, 1002, 900, 1, 5000, &a, &off), 0);
    return 0;
}

int main(void)
{
    printf("test_log_refs (seed %#llx)\n", (unsigned long long)pq_test_seed());
    RUN(test_size_retention_reports_each_dropped_reference);
    RUN(test_no_buffer_drops_as_before);
    RUN(test_full_buffer_stops_at_the_first_not_reported);
    RUN(test_expiry_reports_and_pages);
    RUN(test_damaged_reference_record);
    RUN(test_bad_arguments);
    RUN(test_pending_reclaim_reported_until_done);
    return 0;
}
