/* test_dseg.c - one segment file of a directory-mode log (pq_dseg.h):
 * records with CRC32C, the sparse index, peek by offset, the recovery
 * scan, torn and corrupt records, and garbage that must never be read. */
#include "pq_test.h"

#include "../pq_dseg.h"

#define SEG 65536u

struct seg {
    uint8_t *data;
    uint8_t *ix;
    pq_dseg s;
    pq_dseg_cursor c;
};

static int seg_make(struct seg *g, uint64_t size, uint64_t base)
{
    uint64_t ixs = pq_dseg_index_file_size(size);
    g->data = calloc(1, size);
    g->ix = calloc(1, ixs);
    if (g->data == NULL || g->ix == NULL)
        return -1;
    if (pq_dseg_index_init(g->ix, ixs, base) != 0)
        return -1;
    g->s = (pq_dseg){g->data, size, base, (pq_dseg_index_header *)g->ix,
                     (ixs - sizeof(pq_dseg_index_header)) / sizeof(pq_dseg_index_entry)};
    pq_dseg_cursor_empty(&g->c, base);
    return 0;
}

static void seg_free(struct seg *g)
{
    free(g->data);
    free(g->ix);
}

/* Value i: 8 bytes of i, then (i * 37) % 900 bytes of (uint8_t)i. */
static uint32_t value_of(uint64_t i, uint8_t *buf)
{
    uint32_t len = 8 + (uint32_t)((i * 37) % 900);
    memcpy(buf, &i, 8);
    memset(buf + 8, (int)(i & 0xff), len - 8);
    return len;
}

static int append_values(struct seg *g, uint64_t from, uint64_t n, int with_key)
{
    static uint8_t buf[1024];
    for (uint64_t i = from; i < from + n; i++) {
        uint32_t len = value_of(i, buf);
        pq_log_entry e = {.key = with_key ? "key" : NULL, .key_len = with_key ? 3 : 0,
                          .headers = "hdr", .headers_len = (uint32_t)(i % 4),
                          .value = buf, .value_len = len, .type = 1};
        int rc = pq_dseg_write(&g->s, &g->c, &e, 1, 1000 + i);
        if (rc != 1)
            return rc == 0 ? -ENOSPC : rc;
    }
    return 0;
}

static int check_record(const pq_log_record *r, uint64_t i, int with_key)
{
    uint8_t buf[1024];
    uint32_t len = value_of(i, buf);
    CHECK_EQ(r->offset, i);
    CHECK_EQ(r->timestamp_ms, 1000 + i);
    CHECK_EQ(r->value_len, len);
    CHECK(memcmp(r->value, buf, len) == 0);
    CHECK_EQ(r->headers_len, i % 4);
    CHECK(memcmp(r->headers, "hdr", r->headers_len) == 0);
    if (with_key) {
        CHECK(r->key != NULL && r->key_len == 3 && memcmp(r->key, "key", 3) == 0);
    } else {
        CHECK(r->key == NULL && r->key_len == 0);
    }
    CHECK_EQ(r->type, 1);
    return 0;
}

static int test_round_trip_and_index(void)
{
    struct seg g;
    CHECK(seg_make(&g, SEG, 100) == 0);
    CHECK_EQ(append_values(&g, 100, 60, 1), 0);
    CHECK_EQ(g.c.next_offset, 160);
    CHECK_EQ(g.c.records, 60);
    CHECK_EQ(g.c.max_timestamp_ms, 1159);
    /* ~500 bytes a record: an entry about every 8 records. */
    CHECK(g.c.index_count >= 4 && g.c.index_count <= 60);
    pq_log_record r[64];
    uint64_t next, bad;
    for (uint64_t off = 90; off < 165; off++) {
        /* With the index and without it, the same records. */
        for (int use_ix = 0; use_ix < 2; use_ix++) {
            int n = pq_dseg_peek(&g.s, g.c.pos, use_ix ? g.c.index_count : 0, off, r, 5, &next,
                                 &bad);
            uint64_t first = off < 100 ? 100 : off;
            uint64_t want = first >= 160 ? 0 : (160 - first < 5 ? 160 - first : 5);
            CHECK_EQ(n, want);
            for (int k = 0; k < n; k++)
                CHECK(check_record(&r[k], first + k, 1) == 0);
            CHECK_EQ(next, n ? first + n : off);
        }
    }
    /* Keyless records. */
    CHECK_EQ(append_values(&g, 160, 3, 0), 0);
    CHECK_EQ(pq_dseg_peek(&g.s, g.c.pos, g.c.index_count, 160, r, 64, &next, &bad), 3);
    CHECK(check_record(&r[0], 160, 0) == 0);
    seg_free(&g);
    return 0;
}

static int test_full_and_too_big(void)
{
    struct seg g;
    CHECK(seg_make(&g, 4096, 0) == 0);
    uint8_t big[4096] = {0};
    pq_log_entry e = {.value = big, .value_len = 4096 - PQ_DSEG_REC_HDR + 1, .type = 1};
    CHECK_EQ(pq_dseg_write(&g.s, &g.c, &e, 1, 0), -EMSGSIZE);
    e.value_len = 1000;
    pq_log_entry batch[8];
    for (int i = 0; i < 8; i++)
        batch[i] = e;
    /* 1040 bytes each: three fit in 4096, the batch stops there. */
    CHECK_EQ(pq_dseg_write(&g.s, &g.c, batch, 8, 0), 3);
    CHECK_EQ(g.c.next_offset, 3);
    CHECK_EQ(pq_dseg_write(&g.s, &g.c, batch, 8, 0), 0);
    e.value_len = 4096 - PQ_DSEG_REC_HDR;
    struct seg g2;
    CHECK(seg_make(&g2, 4096, 0) == 0);
    CHECK_EQ(pq_dseg_write(&g2.s, &g2.c, &e, 1, 0), 1); /* exactly a whole segment */
    CHECK_EQ(g2.c.pos, 4096);
    seg_free(&g);
    seg_free(&g2);
    return 0;
}

static int test_scan_rebuilds_cursor_and_index(void)
{
    struct seg g, h;
    CHECK(seg_make(&g, SEG, 7) == 0);
    CHECK_EQ(append_values(&g, 7, 80, 1), 0);
    CHECK(seg_make(&h, SEG, 7) == 0);
    memcpy(h.data, g.data, SEG);
    int torn = -1;
    CHECK_EQ(pq_dseg_scan(&h.s, SEG, &h.c, 1, &torn), 0);
    CHECK_EQ(torn, 0);
    CHECK_EQ(h.c.pos, g.c.pos);
    CHECK_EQ(h.c.next_offset, g.c.next_offset);
    CHECK_EQ(h.c.records, 80);
    CHECK_EQ(h.c.max_timestamp_ms, g.c.max_timestamp_ms);
    CHECK_EQ(h.c.index_count, g.c.index_count);
    CHECK(memcmp(h.ix + 64, g.ix + 64, g.c.index_count * sizeof(pq_dseg_index_entry)) == 0);
    seg_free(&g);
    seg_free(&h);
    return 0;
}

static int test_torn_tail(void)
{
    struct seg g;
    CHECK(seg_make(&g, SEG, 0) == 0);
    CHECK_EQ(append_values(&g, 0, 10, 1), 0);
    uint64_t good_end = g.c.pos;
    CHECK_EQ(append_values(&g, 10, 1, 1), 0);
    uint64_t full_end = g.c.pos;
    /* A write that never finished: its last bytes are missing. */
    memset(g.data + full_end - 16, 0, 16);
    pq_dseg_cursor c;
    pq_dseg_cursor_empty(&c, 0);
    int torn;
    CHECK_EQ(pq_dseg_scan(&g.s, SEG, &c, 0, &torn), 0);
    CHECK_EQ(torn, 1);
    CHECK_EQ(c.pos, good_end);
    CHECK_EQ(c.next_offset, 10);
    CHECK(pq_dseg_dirty_bytes(g.data, good_end, SEG) > 0);
    CHECK(pq_dseg_dirty_bytes(g.data, good_end, SEG) <= full_end - good_end);
    memset(g.data + good_end, 0, SEG - good_end);
    CHECK_EQ(pq_dseg_dirty_bytes(g.data, good_end, SEG), 0);
    CHECK_EQ(pq_dseg_dirty_bytes(g.data, good_end, good_end), 0);
    g.data[SEG - 1] = 1;
    CHECK_EQ(pq_dseg_dirty_bytes(g.data, good_end, SEG), SEG - good_end);
    g.data[SEG - 1] = 0;
    g.data[good_end + 3] = 9;
    CHECK_EQ(pq_dseg_dirty_bytes(g.data, good_end, SEG), 4);
    /* A clean end: the scan says not torn. */
    g.data[good_end + 3] = 0;
    pq_dseg_cursor_empty(&c, 0);
    CHECK_EQ(pq_dseg_scan(&g.s, SEG, &c, 0, &torn), 0);
    CHECK_EQ(torn, 0);
    CHECK_EQ(c.pos, good_end);
    seg_free(&g);
    return 0;
}

static int test_corrupt_record_is_reported(void)
{
    struct seg g;
    CHECK(seg_make(&g, SEG, 0) == 0);
    CHECK_EQ(append_values(&g, 0, 20, 1), 0);
    pq_log_record r[64];
    uint64_t next, bad;
    /* Find record 12 and flip one bit of its value. */
    CHECK_EQ(pq_dseg_peek(&g.s, g.c.pos, g.c.index_count, 12, r, 1, &next, &bad), 1);
    uint64_t pos12 = (uint64_t)(r[0].value - g.data);
    g.data[pos12 + 5] ^= 0x10;
    int n = pq_dseg_peek(&g.s, g.c.pos, 0, 10, r, 64, &next, &bad);
    CHECK_EQ(n, 2); /* 10 and 11, then the bad one stops the batch */
    CHECK_EQ(next, 12);
    CHECK_EQ(pq_dseg_peek(&g.s, g.c.pos, 0, 12, r, 64, &next, &bad), PQ_ERR_CORRUPT);
    CHECK(bad < pos12 && bad + 64 > pos12);
    /* Reading past it is fine: records before the wanted offset are only
     * bounded, not checked. */
    CHECK_EQ(pq_dseg_peek(&g.s, g.c.pos, 0, 13, r, 64, &next, &bad), 7);
    int torn;
    pq_dseg_cursor c;
    pq_dseg_cursor_empty(&c, 0);
    CHECK_EQ(pq_dseg_scan(&g.s, g.c.pos, &c, 0, &torn), 0);
    CHECK_EQ(torn, 1);
    CHECK_EQ(c.next_offset, 12);
    seg_free(&g);
    return 0;
}

/* A damaged size field before the wanted offset must not make the walk
 * skip records: offsets are dense, so the jump is noticed. */
static int test_bad_size_before_offset(void)
{
    struct seg g;
    CHECK(seg_make(&g, SEG, 0) == 0);
    CHECK_EQ(append_values(&g, 0, 20, 1), 0);
    pq_log_record r[64];
    uint64_t next, bad;
    CHECK_EQ(pq_dseg_peek(&g.s, g.c.pos, 0, 5, r, 4, &next, &bad), 4);
    uint64_t pos5 = (uint64_t)(r[0].value - g.data) - PQ_DSEG_REC_HDR - 3 - 1;
    /* (the header, key "key" and one byte of headers are before the value) */
    uint32_t span = (uint32_t)((uint64_t)(r[3].value - g.data) - pos5) & ~7u;
    CHECK(pos5 < (uint64_t)(r[0].value - g.data));
    /* record 5's size now spans records 5..7 */
    uint32_t size;
    memcpy(&size, g.data + pos5, 4);
    memcpy(g.data + pos5, &span, 4);
    int n = pq_dseg_peek(&g.s, g.c.pos, 0, 7, r, 4, &next, &bad);
    CHECK_EQ(n, PQ_ERR_CORRUPT);
    memcpy(g.data + pos5, &size, 4);
    CHECK_EQ(pq_dseg_peek(&g.s, g.c.pos, 0, 7, r, 4, &next, &bad), 4);
    CHECK_EQ(r[0].offset, 7);
    seg_free(&g);
    return 0;
}

static int test_index_seal(void)
{
    struct seg g;
    CHECK(seg_make(&g, SEG, 42) == 0);
    uint64_t ixs = pq_dseg_index_file_size(SEG);
    pq_dseg_index_header h;
    CHECK_EQ(pq_dseg_index_read(g.ix, ixs, 42, &h), -ENODATA);
    CHECK_EQ(pq_dseg_index_read(g.ix, ixs, 43, &h), PQ_ERR_CORRUPT);
    CHECK_EQ(append_values(&g, 42, 30, 1), 0);
    CHECK_EQ(pq_dseg_index_seal(&g.s, &g.c), 0);
    CHECK_EQ(pq_dseg_index_read(g.ix, ixs, 42, &h), 0);
    CHECK_EQ(h.entries, g.c.index_count);
    CHECK_EQ(h.end_pos, g.c.pos);
    CHECK_EQ(h.records, 30);
    CHECK_EQ(h.max_timestamp_ms, 1071);
    g.ix[17] ^= 1;
    CHECK_EQ(pq_dseg_index_read(g.ix, ixs, 42, &h), PQ_ERR_CORRUPT);
    CHECK_EQ(pq_dseg_index_read(g.ix, 10, 42, &h), PQ_ERR_CORRUPT);
    seg_free(&g);
    return 0;
}

/* Garbage data and a garbage index: peek and scan stay inside the
 * segment (ASan watches) and never return a record that fails its CRC. */
static int test_garbage_never_read(void)
{
    uint64_t seed = pq_test_seed();
    struct seg g;
    CHECK(seg_make(&g, 8192, 0) == 0);
    pq_log_record r[64];
    for (int round = 0; round < 3000; round++) {
        (void)append_values(&g, g.c.next_offset, 4, 1); /* until the segment is full */
        /* Mutate a few bytes of data or index. */
        for (int k = 0; k < 1 + (int)(pq_test_rand(&seed) % 4); k++) {
            uint64_t x = pq_test_rand(&seed);
            if (x & 1)
                g.data[(x >> 8) % 8192] ^= (uint8_t)(x >> 40);
            else
                g.ix[64 + (x >> 8) % 64] ^= (uint8_t)(x >> 40);
        }
        uint64_t next, bad, off = pq_test_rand(&seed) % 64;
        uint64_t end = pq_test_rand(&seed) % 8193 & ~7ull;
        int n = pq_dseg_peek(&g.s, end, pq_test_rand(&seed) % 8, off, r, 64, &next, &bad);
        CHECK(n >= 0 || n == PQ_ERR_CORRUPT);
        for (int i = 0; i < n; i++) {
            CHECK(r[i].value >= g.data && r[i].value + r[i].value_len <= g.data + end);
            CHECK(r[i].offset >= off);
        }
        int torn;
        pq_dseg_cursor c;
        pq_dseg_cursor_empty(&c, 0);
        CHECK_EQ(pq_dseg_scan(&g.s, 8192, &c, 0, &torn), 0);
        CHECK(c.pos <= 8192);
        if (round % 50 == 49) {
            memset(g.data, 0, 8192);
            memset(g.ix + 64, 0, pq_dseg_index_file_size(8192) - 64);
            pq_dseg_cursor_empty(&g.c, 0);
        }
    }
    seg_free(&g);
    return 0;
}

/* pq_dseg_find_record: after a damaged record in the middle, the next
 * valid one is found (the offset floor and the limit respected); after a
 * torn tail (zeros, garbage) nothing is. */
static int test_find_record_after_damage(void)
{
    struct seg g;
    CHECK(seg_make(&g, SEG, 100) == 0);
    CHECK_EQ(append_values(&g, 100, 20, 0), 0);
    uint64_t end = g.c.pos;
    pq_dseg_cursor c;
    pq_dseg_cursor_empty(&c, 100);
    int torn;
    /* the positions of records 5 and 6 */
    CHECK_EQ(pq_dseg_scan(&g.s, end, &c, 0, &torn), 0);
    pq_dseg_cursor c5;
    pq_dseg_cursor_empty(&c5, 100);
    uint64_t p5 = 0, p6 = 0;
    for (int i = 0; i <= 6; i++) {
        uint32_t size;
        memcpy(&size, g.data + p5, 4);
        if (i == 5)
            break;
        p5 += (size + 7) & ~7u;
    }
    uint32_t size5;
    memcpy(&size5, g.data + p5, 4);
    p6 = p5 + ((size5 + 7) & ~7u);
    g.data[p5 + 50] ^= 0x10; /* damage record 5 */
    CHECK_EQ(pq_dseg_scan(&g.s, end, &c5, 0, &torn), 0);
    CHECK_EQ(torn, 1);
    CHECK_EQ(c5.pos, p5);
    uint64_t at = 0;
    CHECK_EQ(pq_dseg_find_record(&g.s, p5 + 8, end, 106, 200, &at), 1);
    CHECK_EQ(at, p6);
    CHECK_EQ(pq_dseg_find_record(&g.s, p5 + 8, end, 200, 300, &at), 0); /* floor */
    CHECK_EQ(pq_dseg_find_record(&g.s, p5 + 8, p6 + 20, 106, 200, &at), 0); /* limit */
    /* A torn tail: garbage after the end, then zeros. */
    memset(g.data + end, 0xa5, 300);
    CHECK_EQ(pq_dseg_find_record(&g.s, end, SEG, 120, 400, &at), 0);
    CHECK_EQ(pq_dseg_find_record(&g.s, 0, SEG + 8, 0, 1, &at), -EINVAL);
    seg_free(&g);
    return 0;
}

int main(void)
{
    printf("test_dseg (seed 0x%" PRIx64 ")\n", pq_test_seed());
    RUN(test_round_trip_and_index);
    RUN(test_full_and_too_big);
    RUN(test_scan_rebuilds_cursor_and_index);
    RUN(test_torn_tail);
    RUN(test_corrupt_record_is_reported);
    RUN(test_bad_size_before_offset);
    RUN(test_index_seal);
    RUN(test_garbage_never_read);
    RUN(test_find_record_after_damage);
    return pq_test_result();
}
