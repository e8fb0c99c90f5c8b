/*
 * pq_log.h - a partitioned, replayable log in one shared-memory segment:
 * the memory-mode core of pyqueue.Log.
 *
 * Layout of a log segment (docs/design.md, "Log (memory mode)"):
 *   [0, 256)        pq_segment_header (kind PQ_KIND_LOG; params below)
 *   [256, 4096)     pq_log_shared (the log-wide event, the group table header)
 *   [4096, ...)     P partitions, each `stride` bytes:
 *                     pq_log_part   (256 bytes: claim lock, tail, offsets,
 *                                    start, readable event)
 *                     index         (M entries of {offset, pos}: a sparse
 *                                    index, one entry every
 *                                    PQ_LOG_INDEX_EVERY offsets, slot
 *                                    (offset / EVERY) % M)
 *                     data          (capacity bytes: pq_record.h records)
 *   then            the consumer groups (pq_group.h)
 *
 * Each partition is a ring of records whose payload starts with a
 * pq_log_rec_hdr (offset, timestamp, key and headers lengths), then key,
 * headers and value. Appenders claim under the partition's robust claim
 * lock, which assigns dense offsets (next_offset), writes the record
 * headers and the offset field, and, when the ring is full, moves the start
 * (start_pos, start_offset) past whole oldest records: appends never wait
 * for readers. They wait only for a record in the way that a live appender
 * is still writing (PQ_ERR_LOG_WRITER), never overwrite it.
 * With a retention time, an append also drops the oldest committed
 * records older than that (pq_log_expire does it without appending).
 * Readers read by offset without consuming: peek (find the record, return
 * pointers into the ring), copy out, then validate (start_pos has not
 * passed what was read: the topic's lossy validation).
 * Return values: >= 0, or -errno / PQ_ERR_*; nothing prints.
 */
#ifndef PQ_LOG_H
#define PQ_LOG_H

#include <pthread.h>

#include "pq_common.h"
#include "pq_group.h"
#include "pq_log_entry.h"
#include "pq_log_shared.h"
#include "pq_refs.h"
#include "pq_segment.h"
#include "pq_wait.h"

#define PQ_LOG_PARTS_OFFSET 4096u
#define PQ_LOG_MAX_PARTITIONS 256u
#define PQ_LOG_MIN_CAPACITY 4096u
#define PQ_LOG_MAX_CAPACITY (1ull << 36)
#define PQ_LOG_INDEX_EVERY 64u
#define PQ_LOG_APPEND_MAX 256u /* records per pq_log_append */

/* Reading an offset below the partition's start (dropped by retention) or
 * beyond its end. */
#define PQ_ERR_OFFSET_RANGE (-EDOM)

/* An append needs ring space still held by a record that a live appender
 * is writing (retention never passes it): nothing changed; the
 * pq_log_writer says which (wait with pq_log_wait_writer, append again). */
#define PQ_ERR_LOG_WRITER (-EINPROGRESS)

/* The record an append found in its way (PQ_ERR_LOG_WRITER). */
typedef struct pq_log_writer {
    uint64_t pos;    /* its position */
    uint64_t ctl;    /* its CLAIMED header, as found */
    uint64_t offset; /* its offset */
    int32_t pid;     /* its appender */
} pq_log_writer;

enum pq_log_param {
    PQ_LOG_PARAM_PARTITIONS = 0,
    PQ_LOG_PARAM_CAPACITY = 1,
    PQ_LOG_PARAM_INDEX_ENTRIES = 2,
    PQ_LOG_PARAM_MAX_GROUPS = 3,
    PQ_LOG_PARAM_RETENTION_MS = 4, /* 0: no retention by age */
    PQ_LOG_PARAM_USER0 = 5,        /* free for the binding (flags) */
    PQ_LOG_NPARAMS = 6,
};

/* The start of every record's payload. */
typedef struct pq_log_rec_hdr {
    uint64_t offset;
    uint64_t timestamp_ms;
    uint32_t key_len;     /* PQ_LOG_NO_KEY: no key */
    uint32_t headers_len;
} pq_log_rec_hdr;
#define PQ_LOG_REC_HDR 24u
_Static_assert(sizeof(pq_log_rec_hdr) == PQ_LOG_REC_HDR, "log record header size");

typedef struct pq_log_index_entry {
    _Atomic uint64_t offset;
    _Atomic uint64_t pos;
} pq_log_index_entry;

typedef struct pq_log_part {
    PQ_ALIGNED_LINE pthread_mutex_t claim_lock;
    _Atomic uint64_t claim_tail; /* claim in progress will publish this tail; 0: none */
    _Atomic uint64_t claim_msgs; /* next_offset before that claim */
    PQ_ALIGNED_LINE _Atomic uint64_t tail; /* end of the claimed records (position) */
    _Atomic uint64_t next_offset;          /* offset of the next append */
    PQ_ALIGNED_LINE _Atomic uint64_t start_pos; /* oldest record still in the ring */
    _Atomic uint64_t start_offset;              /* its offset */
    pq_reclaim reclaim; /* out-of-band records behind the start (pq_refs.h) */
    PQ_ALIGNED_LINE pq_event readable;
} pq_log_part;
_Static_assert(sizeof(pq_log_part) == 256, "pq_log_part is 256 bytes");

/* A process-local view of a mapped log segment. */
typedef struct pq_log {
    pq_segment_header *hdr;
    pq_log_shared *shared;
    uint8_t *parts_base;
    uint32_t partitions;
    uint64_t capacity;    /* data bytes per partition */
    uint64_t mask;
    uint64_t index_entries;
    uint64_t stride;
    uint64_t max_payload; /* a quarter of the ring less a header */
    uint64_t retention_ms;
    pq_group_table groups;
} pq_log;

typedef struct pq_log_batch {
    uint64_t first_pos;   /* position of the first record looked at */
    uint64_t next_offset; /* the offset after the records looked at */
    uint32_t count;       /* committed records returned */
    uint32_t skipped;     /* abandoned records passed over */
} pq_log_batch;

uint64_t pq_log_index_entries(uint64_t capacity);
/* Bytes of a segment with that many partitions of that capacity; 0 when
 * the arguments are invalid. */
uint64_t pq_log_segment_size(uint32_t partitions, uint64_t capacity);

/* retention_ms: records older than that are dropped (0: only by capacity).
 * user_flags: kept in params[PQ_LOG_PARAM_USER0] for the binding. */
int pq_log_create(void *base, size_t size, uint32_t partitions, uint64_t capacity,
                  uint64_t retention_ms, uint64_t user_flags);
int pq_log_open(pq_log *l, void *base, size_t size);

/* Bytes a record of these lengths takes in the payload (without the
 * 16-byte ring header). */
static inline uint64_t pq_log_payload_len(uint32_t key_len, uint32_t headers_len,
                                          uint32_t value_len)
{
    return (uint64_t)PQ_LOG_REC_HDR + key_len + headers_len + value_len;
}

/*
 * Append n records to partition `part` (claim -> copy -> commit -> notify).
 * Their offsets are *first_offset .. *first_offset + n - 1. 0; -EINVAL;
 * -EMSGSIZE (a record over max_payload, or a batch over half the ring);
 * -E2BIG (n over PQ_LOG_APPEND_MAX); PQ_ERR_CORRUPT; -ENOTRECOVERABLE;
 * PQ_ERR_LOG_WRITER (the space needed is held by a record a live appender
 * is still writing: nothing changed); -ESTALE with *first_offset set: the
 * records were appended but one or more was dropped (or abandoned) before
 * its commit, which then left its header alone: it is not in the log.
 * Never waits for readers, never overwrites a record still being written.
 */
int pq_log_append(pq_log *l, uint32_t part, const pq_log_entry *e, uint32_t n,
                  uint64_t timestamp_ms, uint64_t *first_offset);

/*
 * Large records (docs/design.md, "Log: large records"): a committed record
 * whose type has PQ_TYPE_OOB carries in its value a reference to a
 * segment of its own, which lives as long as the record is retained. The
 * functions that drop records (retention by size in an append, by age in
 * an append or an expiry) report, in refs, the references of the
 * committed out-of-band records they drop, as a pending reclaim
 * (pq_refs.h): the start moves past them, they stay intact until a caller
 * comes back with refs->reclaim (it unlinked their segments), and every
 * other call reports them again. Set refs->reclaim to 0 before the first
 * call; leave it as the core set it between calls of one caller.
 *
 * pq_log_append with refs (NULL: as pq_log_append, nothing reported, and
 * a pending reclaim dropped: its segments are gc's). -ENOBUFS: references
 * reported (this append's drops, as many as refs holds, or a pending
 * reclaim) and nothing appended: unlink them and append again (refs->count
 * reset, refs->reclaim as the core set it). An append that returns 0
 * reports nothing. -EINVAL also when refs has no room for a pending
 * reclaim. On any other error nothing was dropped and refs->count is as it
 * was.
 */
int pq_log_append_refs(pq_log *l, uint32_t part, const pq_log_entry *e, uint32_t n,
                       uint64_t timestamp_ms, uint64_t *first_offset, pq_refs *refs);

/* pq_log_append_refs, and on PQ_ERR_LOG_WRITER *wr (if not NULL) names
 * the record in the way. */
int pq_log_append_ex(pq_log *l, uint32_t part, const pq_log_entry *e, uint32_t n,
                     uint64_t timestamp_ms, uint64_t *first_offset, pq_refs *refs,
                     pq_log_writer *wr);

/* Wait (on the partition's event) until the record *wr names is no longer
 * that claim (committed, abandoned, or passed), or the deadline
 * (monotonic; < 0: none). 0 worth appending again, -ETIMEDOUT, -EINTR. */
int pq_log_wait_writer(pq_log *l, uint32_t part, const pq_log_writer *wr, int64_t deadline_ns);

/* pq_log_expire with refs (NULL: as pq_log_expire): the count dropped.
 * References reported (refs->reclaim set: this call's drops, or a pending
 * reclaim reported again): unlink them and call again with refs->reclaim
 * as the core set it - that ends the reclaim, and there may be more. */
int pq_log_expire_refs(pq_log *l, uint32_t part, uint64_t now_ms, pq_refs *refs);

/*
 * The references of the committed out-of-band records of a partition
 * still retained (`pyqueue gc`: a segment named by one is live), under
 * the claim lock, from *from (0 or where an earlier call stopped; a
 * position below the start means the start) on. Appended to refs; *from
 * is set to where the scan stopped. 0 all reported; 1 refs is full (call
 * again with the new *from); PQ_ERR_CORRUPT; the lock's error.
 */
int pq_log_scan_refs(pq_log *l, uint32_t part, uint64_t *from, pq_refs *refs);

/*
 * Look at up to max committed records from `offset`. >= 0 records (0 with
 * b->next_offset > offset: only abandoned records, read on from there);
 * -EAGAIN: offset is the end (nothing yet); -EINPROGRESS: the record at
 * offset is being written; PQ_ERR_OFFSET_RANGE: offset is below start or
 * beyond the end (pq_log_bounds says where they are); PQ_ERR_CORRUPT.
 */
int pq_log_peek(pq_log *l, uint32_t part, uint64_t offset, pq_log_record *out, uint32_t max,
                pq_log_batch *b);

/* After copying what peek returned: 0, or -ESTALE when an appender may
 * have overwritten the records meanwhile (discard the copy, peek again). */
int pq_log_validate(pq_log *l, uint32_t part, const pq_log_batch *b);

/* Wait until a record at `offset` may be readable (or offset fell out of
 * range). 0 worth peeking, -ETIMEDOUT, -EINTR. */
int pq_log_wait(pq_log *l, uint32_t part, uint64_t offset, int64_t deadline_ns, uint32_t spin_ns);

/* If the record at offset is CLAIMED by a dead appender, mark it
 * ABANDONED (readers skip it): 1 repaired, 0 nothing to do, -errno. */
int pq_log_repair(pq_log *l, uint32_t part, uint64_t offset);

/*
 * Wait until any of n partitions has a record readable at its offset (as
 * pq_log_wait), or the word *gen is no longer gen_seen (a rebalance; gen
 * may be NULL). On the log-wide event. 0, -ETIMEDOUT, -EINTR.
 */
int pq_log_wait_any(pq_log *l, const uint32_t *parts, const uint64_t *offsets, uint32_t n,
                    const _Atomic uint64_t *gen, uint64_t gen_seen, int64_t deadline_ns,
                    uint32_t spin_ns);

/* Drop the partition's oldest records older than now_ms - retention_ms
 * (retention without an append): the count dropped. */
int pq_log_expire(pq_log *l, uint32_t part, uint64_t now_ms);

/* Start and end offsets of a partition (a consistent pair, read under the
 * claim lock). */
int pq_log_bounds(pq_log *l, uint32_t part, uint64_t *start, uint64_t *end);

/*
 * Shut the log down (pq_shutdown.h): raise the segment's flag to how
 * (PQ_SHUTDOWN_DRAIN, or with PQ_SHUTDOWN_IMMEDIATE) and wake every parked
 * waiter in every process; the wait functions return 0 from then on
 * (callers re-check pq_shutdown_state). Returns the flag before, or -EINVAL.
 */
int pq_log_shutdown(pq_log *l, uint32_t how);

#endif /* PQ_LOG_H */
