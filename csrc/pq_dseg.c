/* pq_dseg.c - records, index and scan of one directory-mode segment file.
 * See pq_dseg.h and docs/design.md ("Log (directory mode)"). */
#define _GNU_SOURCE
#include "pq_dseg.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pq_crc32c.h"
#include "pq_fault.h"

/* The record header as stored (memcpy'd in and out: the mapping is only
 * trusted to be 8-aligned, and its bytes may be anything). */
typedef struct pq_dseg_rec {
    uint32_t size;
    uint32_t crc;
    uint64_t offset;
    uint64_t timestamp_ms;
    uint32_t key_len;
    uint32_t headers_len;
    uint8_t type;
    uint8_t reserved[7];
} pq_dseg_rec;
_Static_assert(sizeof(pq_dseg_rec) == PQ_DSEG_REC_HDR, "record header size");

void pq_dseg_cursor_empty(pq_dseg_cursor *c, uint64_t base_offset)
{
    memset(c, 0, sizeof *c);
    c->next_offset = base_offset;
    c->last_index_pos = UINT64_MAX;
}

uint64_t pq_dseg_index_file_size(uint64_t segment_bytes)
{
    uint64_t n = segment_bytes / PQ_DSEG_INDEX_BYTES + 2;
    return pq_align_up(sizeof(pq_dseg_index_header) + n * sizeof(pq_dseg_index_entry), 4096);
}

static inline pq_dseg_index_entry *pq_dseg_entries(const pq_dseg *s)
{
    return (pq_dseg_index_entry *)((uint8_t *)s->ix + sizeof(pq_dseg_index_header));
}

int pq_dseg_index_init(void *ix, size_t size, uint64_t base_offset)
{
    if (ix == NULL || size < sizeof(pq_dseg_index_header))
        return -EINVAL;
    pq_dseg_index_header h = {.magic = PQ_DSEG_INDEX_MAGIC, .base_offset = base_offset};
    memcpy(ix, &h, sizeof h);
    return 0;
}

static uint32_t pq_dseg_header_crc(const pq_dseg_index_header *h)
{
    return pq_crc32c(0, h, offsetof(pq_dseg_index_header, crc));
}

int pq_dseg_index_seal(pq_dseg *s, const pq_dseg_cursor *c)
{
    if (s->ix == NULL)
        return -EINVAL;
    pq_dseg_index_header h = {
        .magic = PQ_DSEG_INDEX_MAGIC,
        .base_offset = s->base_offset,
        .entries = c->index_count,
        .end_pos = c->pos,
        .records = c->records,
        .max_timestamp_ms = c->max_timestamp_ms,
        .sealed = 1,
    };
    h.crc = pq_dseg_header_crc(&h);
    memcpy(s->ix, &h, sizeof h);
    return 0;
}

int pq_dseg_index_read(const void *ix, size_t size, uint64_t base_offset,
                       pq_dseg_index_header *out)
{
    pq_dseg_index_header h;
    if (ix == NULL || size < sizeof h)
        return PQ_ERR_CORRUPT;
    memcpy(&h, ix, sizeof h);
    if (h.magic != PQ_DSEG_INDEX_MAGIC || h.base_offset != base_offset)
        return PQ_ERR_CORRUPT;
    if (h.sealed == 0)
        return -ENODATA;
    if (h.sealed != 1 || h.crc != pq_dseg_header_crc(&h) ||
        h.entries > (size - sizeof h) / sizeof(pq_dseg_index_entry))
        return PQ_ERR_CORRUPT;
    *out = h;
    return 0;
}

/* CRC32C of a record: its size field, then everything after the crc. */
static uint32_t pq_dseg_crc(const uint8_t *rec, uint32_t size)
{
    uint32_t crc = pq_crc32c(0, rec, sizeof(uint32_t));
    return pq_crc32c(crc, rec + 8, size - 8);
}

/* Add an index entry for the record at pos when one is due. */
static void pq_dseg_index_add(pq_dseg *s, pq_dseg_cursor *c, uint64_t pos, uint64_t offset)
{
    if (s->ix == NULL || c->index_count >= s->ix_cap)
        return;
    if (c->last_index_pos != UINT64_MAX && pos - c->last_index_pos < PQ_DSEG_INDEX_BYTES)
        return;
    pq_dseg_index_entry ent = {(uint32_t)(offset - s->base_offset), (uint32_t)pos};
    memcpy(&pq_dseg_entries(s)[c->index_count], &ent, sizeof ent);
    c->index_count++;
    c->last_index_pos = pos;
}

int pq_dseg_write(pq_dseg *s, pq_dseg_cursor *c, const pq_log_entry *e, uint32_t n,
                  uint64_t ts)
{
    if (s == NULL || s->data == NULL || c == NULL || (n > 0 && e == NULL) ||
        s->data_size > PQ_DSEG_MAX_BYTES || (c->pos & (PQ_DSEG_ALIGN - 1)) != 0 ||
        c->pos > s->data_size)
        return -EINVAL;
    uint32_t i;
    for (i = 0; i < n; i++) {
        uint32_t kl = e[i].key == NULL ? 0 : e[i].key_len;
        if (e[i].key != NULL && kl == PQ_LOG_NO_KEY)
            return i ? (int)i : -EMSGSIZE;
        uint64_t raw = (uint64_t)PQ_DSEG_REC_HDR + kl + e[i].headers_len + e[i].value_len;
        uint64_t size = pq_align_up(raw, PQ_DSEG_ALIGN);
        if (size > s->data_size)
            return i ? (int)i : -EMSGSIZE;
        if (size > s->data_size - c->pos)
            break; /* the segment is full: the caller rolls */
        uint8_t *rec = s->data + c->pos;
        pq_dseg_rec h = {
            .size = (uint32_t)raw,
            .offset = c->next_offset,
            .timestamp_ms = ts,
            .key_len = e[i].key == NULL ? PQ_LOG_NO_KEY : kl,
            .headers_len = e[i].headers_len,
            .type = e[i].type,
        };
        uint8_t *w = rec + PQ_DSEG_REC_HDR;
        if (kl)
            memcpy(w, e[i].key, kl), w += kl;
        if (e[i].headers_len)
            memcpy(w, e[i].headers, e[i].headers_len), w += e[i].headers_len;
        if (e[i].value_len) {
            /* (split around the mid_copy fault point in fault builds: a
             * test stops an appender there, holding the lock) */
            pq_fault_copy(w, 0, e[i].value, e[i].value_len, e[i].value_len);
            w += e[i].value_len;
        }
        memset(w, 0, size - raw);
        memcpy(rec, &h, sizeof h);
        h.crc = pq_dseg_crc(rec, h.size);
        memcpy(rec + offsetof(pq_dseg_rec, crc), &h.crc, sizeof h.crc);
        pq_dseg_index_add(s, c, c->pos, c->next_offset);
        c->pos += size;
        c->next_offset++;
        c->records++;
        if (ts > c->max_timestamp_ms)
            c->max_timestamp_ms = ts;
    }
    return (int)i;
}

/*
 * Is there a valid record at pos, below limit? 1 and *h; 0 when its size
 * is 0 (no record); -1 when it is not valid. The CRC is checked when
 * check_crc is set.
 */
static int pq_dseg_record_at(const uint8_t *data, uint64_t pos, uint64_t limit, int check_crc,
                             pq_dseg_rec *h)
{
    if ((pos & (PQ_DSEG_ALIGN - 1)) != 0 || pos > limit || limit - pos < sizeof(uint32_t))
        return pos == limit ? 0 : -1;
    memcpy(&h->size, data + pos, sizeof h->size);
    if (h->size == 0)
        return 0;
    /* The padded size: the next record starts there, within the limit. */
    if (h->size < PQ_DSEG_REC_HDR || pq_align_up(h->size, PQ_DSEG_ALIGN) > limit - pos)
        return -1;
    memcpy(h, data + pos, sizeof *h);
    uint64_t kl = h->key_len == PQ_LOG_NO_KEY ? 0 : h->key_len;
    if (kl + h->headers_len > h->size - PQ_DSEG_REC_HDR)
        return -1;
    if (check_crc && pq_dseg_crc(data + pos, h->size) != h->crc)
        return -1;
    return 1;
}

int pq_dseg_scan(pq_dseg *s, uint64_t limit, pq_dseg_cursor *c, int rebuild_index, int *torn)
{
    if (s == NULL || s->data == NULL || c == NULL || torn == NULL || limit > s->data_size)
        return -EINVAL;
    *torn = 0;
    for (;;) {
        pq_dseg_rec h;
        int rc = pq_dseg_record_at(s->data, c->pos, limit, 1, &h);
        if (rc == 0)
            return 0;
        if (rc < 0 || h.offset != c->next_offset) {
            *torn = 1;
            return 0;
        }
        if (rebuild_index)
            pq_dseg_index_add(s, c, c->pos, h.offset);
        c->pos += pq_align_up(h.size, PQ_DSEG_ALIGN);
        c->next_offset++;
        c->records++;
        if (h.timestamp_ms > c->max_timestamp_ms)
            c->max_timestamp_ms = h.timestamp_ms;
    }
}

/* Where to start looking for offset: the position of the last index entry
 * at or below it whose record really has that offset (*at_offset), else
 * the start of the segment (base_offset). */
static uint64_t pq_dseg_index_lookup(const pq_dseg *s, uint64_t end, uint64_t count,
                                     uint64_t offset, uint64_t *at_offset)
{
    *at_offset = s->base_offset;
    if (count > s->ix_cap)
        count = s->ix_cap;
    if (s->ix == NULL || count == 0 || offset < s->base_offset)
        return 0;
    const pq_dseg_index_entry *ents = pq_dseg_entries(s);
    uint64_t rel = offset - s->base_offset, lo = 0, hi = count;
    /* The last entry with rel_offset <= rel that points below end (a
     * reader may see entries of records newer than the end it loaded).
     * Entries are hints: a bad one sends the walk to the start, never to
     * a wrong record. */
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        pq_dseg_index_entry m;
        memcpy(&m, &ents[mid], sizeof m);
        if (m.rel_offset <= rel && m.pos < end)
            lo = mid;
        else
            hi = mid;
    }
    pq_dseg_index_entry ent;
    memcpy(&ent, &ents[lo], sizeof ent);
    pq_dseg_rec h;
    if (ent.rel_offset > rel || pq_dseg_record_at(s->data, ent.pos, end, 0, &h) != 1 ||
        h.offset != s->base_offset + ent.rel_offset)
        return 0;
    *at_offset = h.offset;
    return ent.pos;
}

int pq_dseg_peek(const pq_dseg *s, uint64_t end, uint64_t index_count, uint64_t offset,
                 pq_log_record *out, uint32_t max, uint64_t *next_offset, uint64_t *bad_pos)
{
    if (s == NULL || s->data == NULL || next_offset == NULL || bad_pos == NULL ||
        (max > 0 && out == NULL) || end > s->data_size)
        return -EINVAL;
    *next_offset = offset;
    uint64_t expect;
    uint64_t pos = pq_dseg_index_lookup(s, end, index_count, offset, &expect);
    uint32_t n = 0;
    while (n < max) {
        pq_dseg_rec h;
        /* Records before the wanted offset are only bounded, not checked
         * against their CRC: nothing of them is returned. */
        int rc = pq_dseg_record_at(s->data, pos, end, 0, &h);
        if (rc == 0)
            break;
        if (rc > 0 && h.offset != expect)
            rc = -1; /* offsets are dense within a segment, from its base */
        if (rc > 0 && h.offset >= offset &&
            pq_dseg_crc(s->data + pos, h.size) != h.crc)
            rc = -1;
        if (rc < 0) {
            if (n > 0)
                break;
            *bad_pos = pos;
            return PQ_ERR_CORRUPT;
        }
        if (h.offset >= offset) {
            const uint8_t *pl = s->data + pos + PQ_DSEG_REC_HDR;
            uint32_t kl = h.key_len == PQ_LOG_NO_KEY ? 0 : h.key_len;
            pq_log_record *r = &out[n++];
            r->offset = h.offset;
            r->timestamp_ms = h.timestamp_ms;
            r->key = h.key_len == PQ_LOG_NO_KEY ? NULL : pl;
            r->key_len = kl;
            r->headers = pl + kl;
            r->headers_len = h.headers_len;
            r->value = pl + kl + h.headers_len;
            r->value_len = h.size - PQ_DSEG_REC_HDR - kl - h.headers_len;
            r->type = h.type;
            *next_offset = h.offset + 1;
        }
        expect++;
        pos += pq_align_up(h.size, PQ_DSEG_ALIGN);
    }
    return (int)n;
}

int pq_dseg_find_record(const pq_dseg *s, uint64_t from, uint64_t limit, uint64_t min_offset,
                        uint64_t max_offset, uint64_t *pos)
{
    if (s == NULL || s->data == NULL || pos == NULL || limit > s->data_size)
        return -EINVAL;
    for (uint64_t p = pq_align_up(from, PQ_DSEG_ALIGN); p < limit; p += PQ_DSEG_ALIGN) {
        pq_dseg_rec h;
        if (limit - p < sizeof h)
            break;
        memcpy(&h, s->data + p, sizeof h);
        if (h.size == 0 || h.offset < min_offset || h.offset > max_offset)
            continue;
        if (pq_dseg_record_at(s->data, p, limit, 1, &h) == 1) {
            *pos = p;
            return 1;
        }
    }
    return 0;
}

uint64_t pq_dseg_dirty_bytes(const uint8_t *data, uint64_t from, uint64_t to)
{
    if (data == NULL || to <= from)
        return 0;
    uint64_t p = to;
    /* Byte by byte to a multiple of 8, then a word at a time. */
    while (p > from && (p & 7) != 0) {
        if (data[p - 1] != 0)
            return p - from;
        p--;
    }
    while (p - from >= 8) {
        uint64_t w;
        memcpy(&w, data + p - 8, sizeof w);
        if (w != 0)
            break;
        p -= 8;
    }
    while (p > from) {
        if (data[p - 1] != 0)
            return p - from;
        p--;
    }
    return 0;
}

int pq_sync_range(void *base, uint64_t from, uint64_t to)
{
    if (base == NULL || to < from)
        return -EINVAL;
    if (to == from)
        return 0;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t start = from & ~(page - 1);
    if (msync((uint8_t *)base + start, to - start, MS_SYNC) != 0)
        return -errno;
    return 0;
}
