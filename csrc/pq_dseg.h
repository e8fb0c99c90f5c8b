/*
 * pq_dseg.h - one segment file of a directory-mode log: the on-disk record
 * format, appending records with their CRC32C, the sparse offset index,
 * reading by offset, and the recovery scan.
 *
 * A partition of a directory-mode log is a sequence of segments, each
 * named by the offset of its first record (its base offset, as Kafka
 * names them): a data file of records and an index file. The caller maps
 * both (MAP_SHARED) and hands them over as a pq_dseg; this file does no
 * I/O of its own but for pq_sync_range. Positions are byte offsets in the
 * data file.
 *
 * A record (little-endian, 8-aligned, never across files):
 *   u32 size          bytes of the record, header included, before
 *                     padding; 0: no record here (the end of the data)
 *   u32 crc           CRC32C of the size field, then of bytes [8, size)
 *   u64 offset
 *   u64 timestamp_ms
 *   u32 key_len       PQ_LOG_NO_KEY: no key
 *   u32 headers_len
 *   u8  type          the value's codec
 *   u8  reserved[7]   zero
 *   key, headers, value, then zeros up to the next multiple of 8
 *
 * The index file: a 64-byte pq_dseg_index_header, then entries
 * {u32 offset - base, u32 position}, ascending, one for the first record
 * and then one for the first record at least PQ_DSEG_INDEX_BYTES after the
 * previous entry's (Kafka's index.interval.bytes). The header is sealed
 * when the segment stops being the active one (a roll): entry count, data
 * end, record count and largest timestamp, with a CRC of the header.
 *
 * Returns: >= 0, or -errno / PQ_ERR_*; nothing prints.
 */
#ifndef PQ_DSEG_H
#define PQ_DSEG_H

#include "pq_common.h"
#include "pq_log_entry.h"
#include "pq_segment.h"

#define PQ_DSEG_REC_HDR 40u
#define PQ_DSEG_ALIGN 8u
#define PQ_DSEG_INDEX_BYTES 4096u
#define PQ_DSEG_INDEX_MAGIC 0x0158444951505950ULL /* "PYQPIDX\1" */
#define PQ_DSEG_MIN_BYTES 4096u
#define PQ_DSEG_MAX_BYTES (1ull << 30) /* positions fit the index's u32 */

typedef struct pq_dseg_index_header {
    uint64_t magic;
    uint64_t base_offset;
    uint64_t entries;          /* sealed: valid entries */
    uint64_t end_pos;          /* sealed: end of the records in the data file */
    uint64_t records;          /* sealed: records in the segment */
    uint64_t max_timestamp_ms; /* sealed: the largest record timestamp */
    uint32_t sealed;           /* 1 once sealed */
    uint32_t crc;              /* sealed: CRC32C of the 52 bytes before it */
    uint64_t reserved;
} pq_dseg_index_header;
_Static_assert(sizeof(pq_dseg_index_header) == 64, "index header is 64 bytes");

typedef struct pq_dseg_index_entry {
    uint32_t rel_offset;
    uint32_t pos;
} pq_dseg_index_entry;

/* A segment as the caller mapped it. */
typedef struct pq_dseg {
    uint8_t *data;                 /* the data file */
    uint64_t data_size;            /* bytes mapped */
    uint64_t base_offset;
    pq_dseg_index_header *ix;      /* the index file; NULL: none mapped */
    uint64_t ix_cap;               /* entries it has room for */
} pq_dseg;

/* Where writing (or a scan) stands in a segment. */
typedef struct pq_dseg_cursor {
    uint64_t pos;              /* end of the records */
    uint64_t next_offset;      /* offset of the next record */
    uint64_t index_count;      /* index entries written */
    uint64_t last_index_pos;   /* position the newest entry points at */
    uint64_t records;
    uint64_t max_timestamp_ms;
} pq_dseg_cursor;

/* The cursor of an empty segment. */
void pq_dseg_cursor_empty(pq_dseg_cursor *c, uint64_t base_offset);

/* Bytes a record takes in the data file (padding included). */
static inline uint64_t pq_dseg_record_size(uint32_t key_len, uint32_t headers_len,
                                           uint32_t value_len)
{
    return pq_align_up((uint64_t)PQ_DSEG_REC_HDR + key_len + headers_len + value_len,
                       PQ_DSEG_ALIGN);
}

/* Bytes of the index file of a segment of segment_bytes: room for an entry
 * per PQ_DSEG_INDEX_BYTES, and the first. */
uint64_t pq_dseg_index_file_size(uint64_t segment_bytes);

/* Write a fresh (unsealed) index header into a zeroed index file. */
int pq_dseg_index_init(void *ix, size_t size, uint64_t base_offset);

/* Seal the index with what the cursor says of the segment. */
int pq_dseg_index_seal(pq_dseg *s, const pq_dseg_cursor *c);

/*
 * Read a sealed index header from ix (at least the header's 64 bytes of
 * an index file of `size` bytes: only the header is read, size bounds the
 * entry count): 0 and *out; -ENODATA when it is not sealed
 * (the segment was the active one when its writers stopped); PQ_ERR_CORRUPT
 * when magic, base offset or CRC is wrong.
 */
int pq_dseg_index_read(const void *ix, size_t size, uint64_t base_offset,
                       pq_dseg_index_header *out);

/*
 * Append up to n records at the cursor (offsets c->next_offset on, all
 * with timestamp ts) with their CRC and index entries, and advance the
 * cursor. Writes the records in order and stops before the first one that
 * does not fit: the count written (0: the segment is full, roll it), or
 * -EMSGSIZE when the first one would not fit even an empty segment,
 * -EINVAL.
 */
int pq_dseg_write(pq_dseg *s, pq_dseg_cursor *c, const pq_log_entry *e, uint32_t n,
                  uint64_t ts);

/*
 * Walk the valid records from the cursor up to limit, advancing it (and,
 * with rebuild_index, writing the index entries again as pq_dseg_write
 * would). Stops at a zero size (*torn = 0) or at a record that is not
 * valid: bad size, CRC, offset or lengths (*torn = 1). 0, -EINVAL.
 */
int pq_dseg_scan(pq_dseg *s, uint64_t limit, pq_dseg_cursor *c, int rebuild_index, int *torn);

/*
 * Up to max records with offset >= offset among the records in [0, end)
 * (index_count valid index entries), each checked against its CRC. The
 * count (0: none at or after offset in this segment), *next_offset the
 * offset after the last one returned (or offset when none);
 * PQ_ERR_CORRUPT with *bad_pos at the first record that fails a check
 * when no good record came before it (a second call reports it).
 * Record pointers point into s->data.
 */
int pq_dseg_peek(const pq_dseg *s, uint64_t end, uint64_t index_count, uint64_t offset,
                 pq_log_record *out, uint32_t max, uint64_t *next_offset, uint64_t *bad_pos);

/*
 * The first 8-aligned position in [from, limit) holding a whole record
 * that passes its CRC and whose offset is in [min_offset, max_offset]:
 * 1 and *pos, 0 when there is none. Recovery asks it whether valid
 * records follow a damaged one (damage, not a torn tail). Only positions
 * whose offset field is in range are checked against their CRC.
 */
int pq_dseg_find_record(const pq_dseg *s, uint64_t from, uint64_t limit, uint64_t min_offset,
                        uint64_t max_offset, uint64_t *pos);

/* Bytes from `from` up to the last non-zero byte before `to` (0: all zero):
 * what a writer that died left past the valid records. */
uint64_t pq_dseg_dirty_bytes(const uint8_t *data, uint64_t from, uint64_t to);

/* msync(MS_SYNC) the pages holding bytes [from, to) of a mapping. */
int pq_sync_range(void *base, uint64_t from, uint64_t to);

#endif /* PQ_DSEG_H */
