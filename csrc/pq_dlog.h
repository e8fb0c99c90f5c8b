/*
 * pq_dlog.h - the control file of a directory-mode log: the state that the
 * processes using the log share besides its segment files.
 *
 * PATH/control is mapped (MAP_SHARED) by every process that has the log
 * open:
 *   [0, 256)      pq_segment_header (kind PQ_KIND_LOG_DIR; params below)
 *   [256, 4096)   pq_log_shared (the log-wide event, the group table header)
 *   [4096, ...)   P pq_dlog_part: the appenders' robust lock, the active
 *                 segment and the published end of its records, the start
 *                 of the partition, the readers' event
 *   then          the consumer groups (pq_group.h)
 *
 * Appends copy under the partition's lock (as Kafka's Log.append does), so
 * the records of a partition are written in order and the published end
 * (end_pos, end_offset) only ever covers complete records: a reader reads
 * below it without any further check, and a holder that dies leaves
 * nothing readable half-written (the next holder zeroes what it left past
 * the end). A roll (a new active segment) changes the active segment and
 * its end together under a seqlock.
 *
 * The data never depends on this file: an opener that finds itself alone
 * rebuilds it from the segment files (pq_dlog_restore), keeping the
 * groups' committed offsets. The caller maps the segment files and hands
 * them over as pq_dseg (pq_dseg.h).
 */
#ifndef PQ_DLOG_H
#define PQ_DLOG_H

#include <pthread.h>

#include "pq_common.h"
#include "pq_dseg.h"
#include "pq_group.h"
#include "pq_log_shared.h"
#include "pq_segment.h"
#include "pq_wait.h"

#define PQ_DLOG_PARTS_OFFSET 4096u
#define PQ_DLOG_MAX_PARTITIONS 256u

enum pq_dlog_param {
    PQ_DLOG_PARAM_PARTITIONS = 0,
    PQ_DLOG_PARAM_SEGMENT_BYTES = 1,
    PQ_DLOG_PARAM_MAX_GROUPS = 2,
    PQ_DLOG_NPARAMS = 3,
};

typedef struct pq_dlog_part {
    /* The appenders' line: only written under the lock. */
    PQ_ALIGNED_LINE pthread_mutex_t lock;
    _Atomic uint64_t claim_end;   /* end of the records being written; 0: none */
    _Atomic uint32_t torn;        /* a holder died writing: repair before the next write */
    uint32_t reserved0;
    /* The writer's cursor in the active segment (pq_dseg_cursor fields
     * that readers do not need). */
    _Atomic uint64_t last_index_pos;
    _Atomic uint64_t records;
    _Atomic uint64_t max_timestamp_ms;
    _Atomic uint64_t closed_bytes; /* bytes of the closed segments */
    _Atomic int64_t last_sync_ns;
    _Atomic uint64_t allocated;    /* bytes of the active data file given disk blocks */
    /* A roll in progress saves what it will store, so that the next holder
     * can finish it if the roller died (seq odd). */
    _Atomic uint64_t roll_closed_bytes;
    _Atomic uint64_t roll_seg_gen;
    /* An append saves the cursor it starts from, so that the next holder
     * can redo its publication if it died (see pq_dlog_append). */
    _Atomic uint64_t claim_pos;
    _Atomic uint64_t claim_offset;
    _Atomic uint64_t claim_index_count;
    _Atomic uint64_t claim_last_index_pos;
    _Atomic uint64_t claim_records;
    _Atomic uint64_t claim_max_timestamp_ms;
    /* The readers' line, under a seqlock: odd while a roll runs. */
    PQ_ALIGNED_LINE _Atomic uint64_t seq;
    _Atomic uint64_t active_base;  /* base offset of the active segment */
    _Atomic uint64_t end_pos;      /* end of its published records */
    _Atomic uint64_t end_offset;   /* the offset of the next append */
    _Atomic uint64_t index_count;  /* its index entries */
    _Atomic uint64_t start_offset; /* the oldest offset retained */
    _Atomic uint64_t seg_gen;      /* bumped when a segment is added or removed */
    PQ_ALIGNED_LINE pq_event readable;
} pq_dlog_part;
_Static_assert(sizeof(pq_dlog_part) <= 320, "pq_dlog_part size");

/* A process-local view of a mapped control file. */
typedef struct pq_dlog {
    pq_segment_header *hdr;
    pq_log_shared *shared;
    pq_dlog_part *parts;
    uint32_t partitions;
    uint64_t segment_bytes;
    pq_group_table groups;
} pq_dlog;

/* A consistent look at a partition (pq_dlog_snapshot). */
typedef struct pq_dlog_view {
    uint64_t start_offset;
    uint64_t end_offset;
    uint64_t active_base;
    uint64_t end_pos;
    uint64_t index_count;
    uint64_t seg_gen;
} pq_dlog_view;

/* Bytes of a control file; 0 for bad arguments. */
uint64_t pq_dlog_control_size(uint32_t partitions, uint32_t max_groups);

/* A fresh control: every partition empty, its active segment at offset 0. */
int pq_dlog_create(void *base, size_t size, uint32_t partitions, uint64_t segment_bytes,
                   uint32_t max_groups);
int pq_dlog_open(pq_dlog *d, void *base, size_t size);

/*
 * Set what recovery found of a partition, before the control is shared:
 * the oldest retained offset, the active segment's base and cursor, and
 * the bytes of the closed segments.
 */
int pq_dlog_restore(pq_dlog *d, uint32_t part, uint64_t start_offset, uint64_t active_base,
                    const pq_dseg_cursor *c, uint64_t closed_bytes);

/*
 * Take a partition's lock. If the holder died: finish its roll if it was
 * in one, and note that it may have died inside an append (repaired by the
 * next pq_dlog_append, which has the segment mapped). 0, or -errno: the
 * codes of pq_lock_take (pq_lock.h; the bindings get PQ_ERR_LOCK_BUSY and
 * wait with pq_lock_wait_busy, the GIL released).
 */
int pq_dlog_lock(pq_dlog *d, uint32_t part);
/* The same without waiting: -EBUSY when another holds it. */
int pq_dlog_trylock(pq_dlog *d, uint32_t part);
void pq_dlog_unlock(pq_dlog *d, uint32_t part);

/*
 * Under the lock: append up to n records to the active segment s (mapped
 * by the caller; its base must be the active one, else -ESTALE) and
 * publish them. The count appended (0: the segment is full, roll and call
 * again), *first_offset the first one's offset; -EMSGSIZE, -EINVAL;
 * -ENOBUFS when the records would go past the bytes of the file given
 * disk blocks: *need says up to where (the caller allocates them,
 * pq_dlog_set_allocated, and calls again). Segment files are sparse up
 * to segment_bytes and get their blocks as they fill, so an empty log
 * takes no disk, and a full disk is an error of the append, not a SIGBUS
 * of a write into a hole.
 *
 * If the previous holder died inside an append, it first redoes that
 * append's publication from the cursor it saved: the complete records it
 * wrote are published (a reader may have seen some already), and what it
 * left of an incomplete one is zeroed, so that no leftover can follow
 * shorter records in the file.
 */
int pq_dlog_append(pq_dlog *d, uint32_t part, pq_dseg *s, const pq_log_entry *e, uint32_t n,
                   uint64_t ts, uint64_t *first_offset, uint64_t *need);

/* Under the lock: the active data file has disk blocks up to `allocated`
 * (pq_dlog_allocated: how far they go now). */
int pq_dlog_set_allocated(pq_dlog *d, uint32_t part, uint64_t allocated);
uint64_t pq_dlog_allocated(pq_dlog *d, uint32_t part);

/*
 * Under the lock: seal the active segment s's index, and make the segment
 * whose files the caller has made (base = the end offset) the active one.
 * The new base in *new_base. -EINVAL when the active segment is empty.
 * (A roller that dies after the seal but before the switch leaves the
 * active segment sealed: the next append unseals it.)
 */
int pq_dlog_roll(pq_dlog *d, uint32_t part, pq_dseg *s, uint64_t *new_base);

/* Under the lock: the oldest retained offset is now start_offset (whole
 * segments of removed_bytes were dropped; the caller removes their files
 * after this). */
int pq_dlog_set_start(pq_dlog *d, uint32_t part, uint64_t start_offset, uint64_t removed_bytes);

/* A consistent view of a partition (retries while a roll runs). */
int pq_dlog_snapshot(pq_dlog *d, uint32_t part, pq_dlog_view *v);

/* The largest timestamp and record count of the active segment, and the
 * closed segments' bytes (under the lock, for retention). */
int pq_dlog_active_stats(pq_dlog *d, uint32_t part, uint64_t *max_ts, uint64_t *records,
                         uint64_t *closed_bytes);

/* Notify a partition's readers and the log-wide event (after unlocking). */
void pq_dlog_notify(pq_dlog *d, uint32_t part);

/* Wait until the record at offset may be readable (end_offset beyond it,
 * or offset out of range). 0, -ETIMEDOUT, -EINTR. */
int pq_dlog_wait(pq_dlog *d, uint32_t part, uint64_t offset, int64_t deadline_ns,
                 uint32_t spin_ns);

/*
 * Wait until any of n partitions has a record at or after its offset, or
 * the word *gen is no longer gen_seen (a rebalance; gen may be NULL). On
 * the log-wide event.
 */
int pq_dlog_wait_any(pq_dlog *d, const uint32_t *parts, const uint64_t *offsets, uint32_t n,
                     const _Atomic uint64_t *gen, uint64_t gen_seen, int64_t deadline_ns,
                     uint32_t spin_ns);

/* Should a sync be done now, with fsync every interval_ns? Marks it done
 * (the caller then syncs). */
int pq_dlog_sync_due(pq_dlog *d, uint32_t part, int64_t interval_ns);

/*
 * Shut the directory log down (pq_shutdown.h): raise the segment's flag to how
 * (PQ_SHUTDOWN_DRAIN, or with PQ_SHUTDOWN_IMMEDIATE) and wake every parked
 * waiter in every process; the wait functions return 0 from then on
 * (callers re-check pq_shutdown_state). Returns the flag before, or -EINVAL.
 */
int pq_dlog_shutdown(pq_dlog *d, uint32_t how);

#endif /* PQ_DLOG_H */
