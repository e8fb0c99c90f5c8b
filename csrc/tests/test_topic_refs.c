/* test_topic_refs.c - out-of-band records of a topic: the claim and the
 * trim report the references of the records head passes, never one a
 * subscriber has not passed; the scan lists the committed ones
 * (pq_topic.h, pq_topic_refs.c). */
#include "pq_test.h"

#include "../pq_topic.h"

#define CAP 4096u
#define OOB (PQ_TOPIC_TYPE_OOB | 1u)

static void *make_topic(int mode, pq_topic *t)
{
    size_t size = pq_topic_segment_size(CAP);
    void *base = pq_test_shared(size);
    if (base == NULL || pq_topic_create(base, size, CAP, mode, NULL, 0) != 0 ||
        pq_topic_open(t, base, size) != 0)
        return NULL;
    return base;
}

/* Publish a 64-byte record carrying v with type typ (no wait); refs (may
 * be NULL) collects what the claim passed: a claim that reports a reclaim
 * (-ENOBUFS) is made again, as the binding does once it unlinked them.
 * Returns the claim's code. */
static int put(pq_topic *t, uint64_t v, uint8_t typ, pq_topic_refs *refs, int commit)
{
    uint32_t len = 64;
    uint64_t pos, needed;
    int rc, turns = 0;
    while ((rc = pq_topic_claim_refs(t, &len, 1, &pos, &needed, refs)) == -ENOBUFS &&
           ++turns < 100)
        ;
    if (rc != 0)
        return rc;
    memset(pq_topic_payload(t, pos), 0, len);
    memcpy(pq_topic_payload(t, pos), &v, sizeof v);
    if (commit)
        pq_topic_commit(t, pos, typ);
    return 0;
}

/* Read every committed record at s's cursor; returns how many. */
static int drain(pq_topic *t, pq_topic_sub *s)
{
    pq_topic_record rec[64];
    pq_topic_batch b;
    int got = 0;
    for (int i = 0; i < 1000; i++) {
        int rc = pq_topic_peek(t, s, rec, 64, &b);
        if (rc < 0)
            return rc == -EAGAIN || rc == -EINPROGRESS ? got : rc;
        if (pq_topic_advance(t, s, &b) == 0)
            got += rc;
    }
    return got;
}

static uint64_t ref_value(const pq_topic_ref *r)
{
    uint64_t v;
    memcpy(&v, r->bytes, sizeof v);
    return v;
}

/* A lossless claim reports each out-of-band record it reclaims, in order,
 * and no plain one. */
static int test_claim_reports_passed(void)
{
    pq_topic t;
    pq_topic_sub s;
    pq_topic_ref items[64];
    pq_topic_refs refs = {items, 64, 0, 0};
    void *base = make_topic(PQ_TOPIC_LOSSLESS, &t);
    CHECK(base != NULL);
    CHECK_EQ(pq_topic_subscribe(&t, &s, PQ_TOPIC_START_LATEST), 0);
    /* 80-byte records: 51 fill the ring; odd values out of band. */
    uint64_t v = 0;
    for (; v < 40; v++)
        CHECK_EQ(put(&t, v, (v & 1) ? OOB : 1, &refs, 1), 0);
    CHECK_EQ(refs.count, 0u); /* nothing reclaimed yet */
    CHECK_EQ(drain(&t, &s), 40);
    for (; v < 80; v++)
        CHECK_EQ(put(&t, v, (v & 1) ? OOB : 1, &refs, 1), 0);
    CHECK(refs.count > 0);
    for (uint32_t i = 0; i < refs.count; i++) {
        CHECK_EQ(refs.items[i].len, 64u);
        CHECK_EQ(ref_value(&refs.items[i]), 2 * i + 1);
    }
    /* Not read: the claim waits, reporting nothing. */
    uint32_t seen = refs.count;
    int rc = 0;
    for (int i = 0; i < 100 && rc == 0; i++, v++)
        rc = put(&t, v, OOB, &refs, 1);
    CHECK_EQ(rc, -EAGAIN);
    CHECK(refs.count >= seen);
    for (uint32_t i = 0; i < refs.count; i++)
        CHECK(ref_value(&refs.items[i]) < 40); /* only what s read before the 2nd burst */
    munmap(base, pq_topic_segment_size(CAP));
    return 0;
}

/* refs full: -ENOBUFS, head past the ones reported, nothing claimed; the
 * next claim reports the rest and goes ahead. */
static int test_claim_enobufs(void)
{
    pq_topic t;
    pq_topic_sub s;
    pq_topic_ref items[1];
    pq_topic_refs refs = {items, 1, 0, 0};
    void *base = make_topic(PQ_TOPIC_LOSSY, &t);
    CHECK(base != NULL);
    CHECK_EQ(pq_topic_subscribe(&t, &s, PQ_TOPIC_START_LATEST), 0);
    uint64_t v = 0;
    for (; v < 51; v++)
        CHECK_EQ(put(&t, v, OOB, NULL, 1), 0); /* the ring is full: 51 x 80 bytes */
    /* A 1000-byte record reclaims 13 records: one reported at a time. */
    uint32_t len = 1000;
    uint64_t pos, needed;
    uint64_t want = 0;
    int rc, turns = 0;
    while ((rc = pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &refs)) == -ENOBUFS) {
        CHECK_EQ(refs.count, 1u);
        CHECK_EQ(ref_value(&items[0]), want);
        want++;
        refs.count = 0;
        CHECK(++turns < 100);
    }
    CHECK_EQ(rc, 0);
    if (refs.count == 1) {
        CHECK_EQ(ref_value(&items[0]), want);
        want++;
    }
    CHECK(want >= 12);
    pq_topic_commit(&t, pos, 1);
    munmap(base, pq_topic_segment_size(CAP));
    return 0;
}

/* The trim releases an out-of-band record only once every subscriber has
 * passed it, and moves head no further than its end. */
static int test_trim_after_last_subscriber(void)
{
    pq_topic t;
    pq_topic_sub fast, slow, late;
    pq_topic_ref items[4];
    pq_topic_refs refs = {items, 4, 0, 0};
    pq_topic_stats st;
    void *base = make_topic(PQ_TOPIC_LOSSLESS, &t);
    CHECK(base != NULL);
    CHECK_EQ(pq_topic_subscribe(&t, &fast, PQ_TOPIC_START_LATEST), 0);
    CHECK_EQ(pq_topic_subscribe(&t, &slow, PQ_TOPIC_START_LATEST), 0);
    CHECK_EQ(put(&t, 7, 1, NULL, 1), 0);
    CHECK_EQ(put(&t, 42, OOB, NULL, 1), 0);
    CHECK_EQ(put(&t, 8, 1, NULL, 1), 0);
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &refs), 0); /* nobody read it */
    CHECK_EQ(drain(&t, &fast), 3);
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &refs), 0); /* slow has not */
    CHECK_EQ(refs.count, 0u);
    CHECK_EQ(drain(&t, &slow), 3);
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &refs), 1);
    CHECK_EQ(ref_value(&items[0]), 42u);
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &refs), 0); /* once */
    /* The plain record after it is still retained. */
    pq_topic_get_stats(&t, &st);
    CHECK_EQ(st.retained, 1u);
    CHECK_EQ(pq_topic_subscribe(&t, &late, PQ_TOPIC_START_EARLIEST), 0);
    CHECK_EQ(drain(&t, &late), 1);
    /* A limit below the record keeps it. */
    CHECK_EQ(put(&t, 43, OOB, NULL, 1), 0);
    CHECK_EQ(drain(&t, &fast), 1);
    CHECK_EQ(drain(&t, &slow), 1);
    CHECK_EQ(drain(&t, &late), 1);
    refs.count = 0;
    CHECK_EQ(pq_topic_trim(&t, fast.cursor - 16, &refs), -EINVAL); /* inside it */
    CHECK_EQ(pq_topic_trim(&t, fast.cursor - 80, &refs), 0);        /* before its end */
    CHECK_EQ(pq_topic_trim(&t, fast.cursor, &refs), 1);
    CHECK_EQ(ref_value(&items[0]), 43u);
    /* A full refs: count == max, the rest on the next call. */
    refs.max = 1;
    refs.count = 0;
    CHECK_EQ(put(&t, 50, OOB, NULL, 1), 0);
    CHECK_EQ(put(&t, 51, OOB, NULL, 1), 0);
    CHECK_EQ(drain(&t, &fast), 2);
    CHECK_EQ(drain(&t, &slow), 2);
    CHECK_EQ(drain(&t, &late), 2);
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &refs), 1);
    CHECK_EQ(ref_value(&items[0]), 50u);
    refs.count = 0;
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &refs), 1);
    CHECK_EQ(ref_value(&items[0]), 51u);
    refs.count = 0;
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &refs), 0);
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, NULL), -EINVAL);
    munmap(base, pq_topic_segment_size(CAP));
    return 0;
}

/* With no subscriber the trim may go up to tail, but never past a record
 * still CLAIMED: its publisher may commit it out of band after. */
static int test_trim_stops_at_a_claimed_record(void)
{
    pq_topic t;
    pq_topic_ref items[4];
    pq_topic_refs refs = {items, 4, 0, 0};
    void *base = make_topic(PQ_TOPIC_LOSSLESS, &t);
    CHECK(base != NULL);
    CHECK_EQ(put(&t, 1, OOB, NULL, 1), 0);
    uint32_t len = 64;
    uint64_t pending, needed;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pending, &needed, NULL), 0); /* in flight */
    CHECK_EQ(put(&t, 3, OOB, NULL, 1), 0);
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &refs), 1); /* the first, not past the claimed */
    CHECK_EQ(ref_value(&items[0]), 1u);
    memset(pq_topic_payload(&t, pending), 0, len);
    pq_topic_payload(&t, pending)[0] = 2;
    pq_topic_commit(&t, pending, OOB);
    refs.count = 0;
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &refs), 2); /* committed now: both reported */
    CHECK_EQ(ref_value(&items[0]), 2u);
    CHECK_EQ(ref_value(&items[1]), 3u);
    munmap(base, pq_topic_segment_size(CAP));
    return 0;
}

/* The scan lists committed out-of-band records in the ring - not a
 * claimed one, not a plain one - page by page. */
static int test_scan(void)
{
    pq_topic t;
    pq_topic_ref items[2];
    pq_topic_refs refs = {items, 2, 0, 0};
    void *base = make_topic(PQ_TOPIC_LOSSY, &t);
    CHECK(base != NULL);
    CHECK_EQ(put(&t, 1, OOB, NULL, 1), 0);
    CHECK_EQ(put(&t, 2, 1, NULL, 1), 0);
    CHECK_EQ(put(&t, 3, OOB, NULL, 1), 0);
    CHECK_EQ(put(&t, 4, OOB, NULL, 1), 0);
    CHECK_EQ(put(&t, 5, OOB, NULL, 0), 0); /* claimed, never committed */
    uint64_t from = 0;
    CHECK_EQ(pq_topic_scan_refs(&t, &from, &refs), 1);
    CHECK_EQ(refs.count, 2u);
    CHECK_EQ(ref_value(&items[0]), 1u);
    CHECK_EQ(ref_value(&items[1]), 3u);
    refs.count = 0;
    CHECK_EQ(pq_topic_scan_refs(&t, &from, &refs), 0);
    CHECK_EQ(refs.count, 1u);
    CHECK_EQ(ref_value(&items[0]), 4u);
    munmap(base, pq_topic_segment_size(CAP));
    return 0;
}

/* A lossy subscriber lapped (its cursor behind head) does not stop the
 * trim: the one that read the out-of-band record releases it. */
static int test_lapped_lossy_subscriber_holds_nothing_back(void)
{
    pq_topic t;
    pq_topic_sub fast, lapped;
    pq_topic_ref items[4];
    pq_topic_refs refs = {items, 4, 0, 0};
    void *base = make_topic(PQ_TOPIC_LOSSY, &t);
    CHECK(base != NULL);
    CHECK_EQ(pq_topic_subscribe(&t, &lapped, PQ_TOPIC_START_LATEST), 0);
    CHECK_EQ(pq_topic_subscribe(&t, &fast, PQ_TOPIC_START_LATEST), 0);
    /* Twice the ring in 80-byte records: head passes the lapped cursor. */
    for (uint64_t v = 0; v < 2 * CAP / 80; v++) {
        CHECK_EQ(put(&t, v, 1, NULL, 1), 0);
        CHECK(drain(&t, &fast) >= 0);
    }
    CHECK(t.ctl->head > lapped.cursor);
    CHECK_EQ(put(&t, 99, OOB, NULL, 1), 0);
    CHECK_EQ(drain(&t, &fast), 1);
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &refs), 1);
    CHECK_EQ(ref_value(&items[0]), 99u);
    munmap(base, pq_topic_segment_size(CAP));
    return 0;
}

/* A reclaim stays pending until a caller comes back with its token: a
 * caller that never does (killed before its unlinks) leaves it for the
 * next claim or trim, which reports the same references again; the
 * records are not overwritten meanwhile. */
static int test_pending_reclaim_reported_until_done(void)
{
    pq_topic t;
    pq_topic_ref items[4], items2[4];
    pq_topic_refs first = {items, 4, 0, 0};
    pq_topic_refs second = {items2, 4, 0, 0};
    void *base = make_topic(PQ_TOPIC_LOSSY, &t);
    CHECK(base != NULL);
    uint64_t v = 0;
    for (; v < 51; v++)
        CHECK_EQ(put(&t, v, (v == 0 || v == 1) ? OOB : 1, NULL, 1), 0); /* full */
    uint32_t len = 64;
    uint64_t pos, needed;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &first), -ENOBUFS);
    CHECK_EQ(first.count, 1u);
    CHECK_EQ(ref_value(&items[0]), 0u);
    const uint64_t token = first.reclaim;
    CHECK(token != 0);
    CHECK_EQ(t.ctl->head, token); /* head is past it */
    /* "first" never comes back: every other caller gets it again. */
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &second), -ENOBUFS);
    CHECK_EQ(second.count, 1u);
    CHECK_EQ(ref_value(&items2[0]), 0u);
    CHECK_EQ(second.reclaim, token);
    second.count = 0;
    second.reclaim = 0; /* (forgot it: reported once more) */
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &second), 1);
    CHECK_EQ(ref_value(&items2[0]), 0u);
    CHECK_EQ(second.reclaim, token);
    /* A refs with no room for it: -EINVAL, nothing changed. */
    pq_topic_refs tiny = {items2, 1, 1, 0};
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &tiny), -EINVAL);
    /* Back with the token: the reclaim ends, the claim goes ahead into
     * the room it freed. */
    second.count = 0;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &second), 0);
    CHECK_EQ(second.count, 0u);
    CHECK_EQ(second.reclaim, 0u);
    pq_topic_commit(&t, pos, 1);
    /* The first caller's stale token ends nothing: the next claim reports
     * the next out-of-band record (1), once. */
    first.count = 0;
    CHECK_EQ(put(&t, 99, 1, &first, 1), 0);
    CHECK_EQ(first.count, 1u);
    CHECK_EQ(ref_value(&items[0]), 1u);
    CHECK_EQ(first.reclaim, 0u);
    munmap(base, pq_topic_segment_size(CAP));
    return 0;
}

/* A caller that reports nothing (refs NULL) drops a pending reclaim (its
 * segments are gc's); damaged reclaim words are dropped once, reported as
 * corruption, and the topic goes on. */
static int test_pending_reclaim_dropped(void)
{
    pq_topic t;
    pq_topic_ref items[4];
    pq_topic_refs refs = {items, 4, 0, 0};
    void *base = make_topic(PQ_TOPIC_LOSSY, &t);
    CHECK(base != NULL);
    for (uint64_t v = 0; v < 51; v++)
        CHECK_EQ(put(&t, v, v == 0 ? OOB : 1, NULL, 1), 0);
    uint32_t len = 64;
    uint64_t pos, needed;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &refs), -ENOBUFS);
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, NULL), 0);
    pq_topic_commit(&t, pos, 1);
    refs.count = 0;
    refs.reclaim = 0;
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &refs), 0); /* nothing pending any more */
    /* Damage: a range ahead of head. */
    uint64_t *pd = (uint64_t *)((uint8_t *)t.ctl + ((sizeof(pq_topic_ctl) + 63) & ~(size_t)63));
    pd[4] = t.ctl->head + 16;  /* reclaim.from */
    pd[5] = t.ctl->head + 96;  /* reclaim.to */
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &refs), PQ_ERR_CORRUPT);
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &refs), 0);
    pq_topic_commit(&t, pos, 1);
    munmap(base, pq_topic_segment_size(CAP));
    return 0;
}

/* The pending words a holder leaves when it dies at each point of
 * reclaim_start, a stale token meeting a later reclaim, a record of the
 * range committed late, and a trim with no room. */
static int test_pending_reclaim_edges(void)
{
    pq_topic t;
    pq_topic_ref items[4], items2[4];
    pq_topic_refs a = {items, 4, 0, 0}, b = {items2, 4, 0, 0};
    void *base = make_topic(PQ_TOPIC_LOSSY, &t);
    CHECK(base != NULL);
    uint64_t *pd = (uint64_t *)((uint8_t *)t.ctl + ((sizeof(pq_topic_ctl) + 63) & ~(size_t)63));
    /* 51 records of 80 bytes fill the ring; 0, 1 and 2 out of band. */
    for (uint64_t v = 0; v < 51; v++)
        CHECK_EQ(put(&t, v, v <= 2 ? OOB : 1, NULL, 1), 0);
    uint32_t len = 64;
    uint64_t pos, needed;
    /* 1. Announced, died before head moved: dropped quietly, not corrupt;
     *    the record is reported by the claim that passes it. */
    pd[4] = t.ctl->head;       /* reclaim.from */
    pd[5] = t.ctl->head + 80;  /* reclaim.to */
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &a), -ENOBUFS);
    CHECK_EQ(a.count, 1u);
    CHECK_EQ(ref_value(&items[0]), 0u);
    const uint64_t x = a.reclaim;
    /* 2. b is given X too; a ends X and starts Y (record 1), then never
     *    comes back: b's stale X must not end Y. */
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &b), -ENOBUFS);
    CHECK_EQ(b.reclaim, x);
    a.count = 0;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &a), 0); /* X ends */
    pq_topic_commit(&t, pos, 1);
    a.count = 0;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &a), -ENOBUFS); /* Y */
    CHECK_EQ(ref_value(&items[0]), 1u);
    CHECK(a.reclaim != x);
    b.count = 0;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &b), -ENOBUFS);
    CHECK_EQ(b.count, 1u);
    CHECK_EQ(ref_value(&items2[0]), 1u); /* Y, reported to b: not ended by X */
    /* 3. With Y's token b ends it; a stale token with nothing pending is
     *    consumed (a trim that finds nothing leaves refs->reclaim 0). */
    b.count = 0;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &b), 0);
    pq_topic_commit(&t, pos, 1);
    CHECK_EQ(b.reclaim, 0u);
    a.count = 0; /* a still holds Y's token: stale now */
    CHECK_EQ(pq_topic_trim(&t, t.ctl->head, &a), 0);
    CHECK_EQ(a.reclaim, 0u);
    /* 4. A trim with refs full on entry reports nothing, moves nothing. */
    pq_topic_refs full = {items, 1, 1, 0};
    uint64_t h = t.ctl->head;
    CHECK_EQ(pq_topic_trim(&t, UINT64_MAX, &full), 0);
    CHECK_EQ(t.ctl->head, h);
    /* 5. Damage: a range older than the ring. */
    pd[4] = t.ctl->head - 2 * CAP;
    pd[5] = t.ctl->head;
    a.count = 0;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &a), PQ_ERR_CORRUPT);
    munmap(base, pq_topic_segment_size(CAP));
    return 0;
}

/* A record the reclaim passed CLAIMED and that its publisher commits out
 * of band afterwards is reported with the others, not taken for damage. */
static int test_pending_reclaim_with_a_late_commit(void)
{
    pq_topic t;
    pq_topic_ref items[4], items2[1];
    pq_topic_refs a = {items, 4, 0, 0}, b = {items2, 1, 0, 0}; /* b: room for one */
    void *base = make_topic(PQ_TOPIC_LOSSY, &t);
    CHECK(base != NULL);
    uint32_t len = 64;
    uint64_t slow, pos, needed;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &slow, &needed, NULL), 0); /* in flight */
    for (uint64_t v = 1; v < 51; v++)
        CHECK_EQ(put(&t, v, v == 1 ? OOB : 1, NULL, 1), 0);
    uint32_t lens[2] = {64, 64}; /* two records: passes the slow one and 1 */
    uint64_t two[2];
    CHECK_EQ(pq_topic_claim_refs(&t, lens, 2, two, &needed, &a), -ENOBUFS);
    CHECK_EQ(a.count, 1u);
    CHECK_EQ(ref_value(&items[0]), 1u);
    memset(pq_topic_payload(&t, slow), 0, len); /* the slow publisher commits now */
    pq_topic_payload(&t, slow)[0] = 7;
    pq_topic_commit(&t, slow, OOB);
    /* Two references now, b holds one at a time: the first, a token where
     * it stopped; back with it, the second and the end's token; back with
     * that, the reclaim ends. Nothing is dropped unreported. */
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &b), -ENOBUFS);
    CHECK_EQ(b.count, 1u);
    CHECK_EQ(ref_value(&items2[0]), 7u);
    const uint64_t part = b.reclaim;
    b.count = 0;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &b), -ENOBUFS);
    CHECK_EQ(b.count, 1u);
    CHECK_EQ(ref_value(&items2[0]), 1u);
    CHECK(b.reclaim > part);
    /* A stale partial token (at or below from now) ends nothing: the
     * rest is reported again. */
    pq_topic_refs stale = {items2, 1, 0, part};
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &stale), -ENOBUFS);
    CHECK_EQ(ref_value(&items2[0]), 1u);
    b.count = 0;
    CHECK_EQ(pq_topic_claim_refs(&t, &len, 1, &pos, &needed, &b), 0);
    pq_topic_commit(&t, pos, 1);
    munmap(base, pq_topic_segment_size(CAP));
    return 0;
}

int main(void)
{
    printf("test_topic_refs\n");
    RUN(test_claim_reports_passed);
    RUN(test_claim_enobufs);
    RUN(test_trim_after_last_subscriber);
    RUN(test_trim_stops_at_a_claimed_record);
    RUN(test_scan);
    RUN(test_lapped_lossy_subscriber_holds_nothing_back);
    RUN(test_pending_reclaim_reported_until_done);
    RUN(test_pending_reclaim_dropped);
    RUN(test_pending_reclaim_edges);
    RUN(test_pending_reclaim_with_a_late_commit);
    return pq_test_result();
}
