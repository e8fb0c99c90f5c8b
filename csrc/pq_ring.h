/*
 * pq_ring.h - the multi-producer multi-consumer ring of variable-size
 * records that backs pyqueue.Queue.
 *
 * Layout of a queue segment:
 *   [0, 256)            pq_segment_header (kind PQ_KIND_QUEUE)
 *   [256, 4096)         pq_ring_ctl: cursors, claim lock, events, counters,
 *                       process slots, epochs
 *   [4096, 4096 + span) data area: one region per level l (0 <= l <
 *                       nlevels) of cap << l bytes at cap * (2^l - 1),
 *                       cap a power of two; the file is sparse, and only
 *                       what the ring uses has pages (pq_ring_epoch.c)
 *
 * A record is a 16-byte header followed by the payload, padded to 16 bytes.
 * Positions (head, tail) are ever-growing 64-bit byte counters. The ring
 * runs in one region at a time: an epoch is a run of positions from its
 * start (the tail when it began) to the next epoch's start, laid out in
 * the region of its level at offset (pos - start) & (cap_l - 1). A claim
 * that finds the ring full starts a new epoch one level up (twice the
 * size) at the tail instead of waiting; a queue that drains starts over at
 * level 0 and the emptied regions are given back (docs/design.md,
 * "Unbounded queues"). A record never wraps nor crosses an epoch: when it
 * does not fit before the end of the region a PADDING record fills the rest.
 *
 * Protocol (docs/design.md explains every memory order):
 *   producers  pq_ring_claim -> copy into pq_ring_payload -> pq_ring_commit
 *              -> pq_ring_notify_readable. The claim is the only serialized
 *              step (a robust process-shared mutex held for a few stores);
 *              copies and commits of different producers run in parallel.
 *   consumers  pq_ring_peek -> copy the payloads out -> pq_ring_take
 *              -> build the objects -> pq_ring_taken_done, lock-free: the
 *              copy is validated by the CAS on head, and a consumer never
 *              holds a record, so a dead consumer never blocks the queue.
 *              pq_ring_take announces the batch in the consumer's process
 *              slot first, so that messages a consumer took and died with
 *              are counted (pq_ring_reap_dead_consumers).
 */
#ifndef PQ_RING_H
#define PQ_RING_H

#include <pthread.h>

#include "pq_common.h"
#include "pq_segment.h"
#include "pq_record.h"
#include "pq_wait.h"

#define PQ_RING_CTL_OFFSET PQ_SEGMENT_HEADER_BYTES
#define PQ_RING_DATA_OFFSET 4096u
#define PQ_RING_MIN_CAPACITY 4096u
#define PQ_RING_MAX_CAPACITY (1ull << 40)
/* Levels a ring may grow through (the first, cap bytes, included). */
#define PQ_RING_LEVELS 20
/* The newest epochs kept in pq_ring_ctl.epochs (indexed by epoch number
 * modulo this): at least PQ_RING_LEVELS, since the live epochs (from the
 * one that holds head to the current one) have strictly increasing levels. */
#define PQ_RING_EPOCHS 32
/* The data area's regions add up to at most this much address space (and
 * file size: sparse, so nothing until used), unless one region is bigger. */
#define PQ_RING_SPAN_MAX (4ull << 30)
/* Extents in pq_ring_ctl.level_reserved are counted in these units. */
#define PQ_RING_EXTENT_UNIT 4096u

/* Creation parameters kept in pq_segment_header.params. */
enum pq_ring_param {
    PQ_RING_PARAM_CAPACITY = 0,
    PQ_RING_PARAM_MAXSIZE = 1,     /* message-count limit, 0 = none */
    PQ_RING_PARAM_USER0 = 2,       /* free for the binding (overflow, ...) */
    PQ_RING_PARAM_USER1 = 3,
    PQ_RING_PARAM_USER2 = 4,
    PQ_RING_PARAM_USER3 = 5,
    PQ_RING_NPARAMS = 6,
};

enum pq_ring_counter {
    PQ_COUNT_REJECTED = 0,
    PQ_COUNT_DROPPED = 1,
    PQ_COUNT_ABANDONED = 2,       /* records whose producer died (passed by head) */
    PQ_COUNT_ABANDONED_TAKEN = 3, /* messages taken by a consumer that died with them */
    PQ_COUNTERS = 8,
};

/*
 * Process slots: a consumer process announces in its slot the batch it is
 * about to take, so that when it dies after its consume CAS and before it
 * handed the messages over, the loss is counted (PQ_COUNT_ABANDONED_TAKEN)
 * by pq_ring_reap_dead_consumers. docs/design.md, "Consumers that die
 * holding messages", has the protocol.
 */
#define PQ_RING_SLOTS 64
#define PQ_SLOT_HELD_SHIFT 32

typedef struct pq_ring_slot {
    /* pq_proc_pack of the process that holds the slot; 0 = free. owner
     * and taking are one 16-aligned pair (a reaper frees both at once). */
    _Atomic uint64_t owner;
    /* held (bits 32-63): messages taken by earlier batches of the current
     * operation (get_many), not yet handed over; bits 0-31: messages of the
     * announced batch, which count only if head has passed taking_next. */
    _Atomic uint64_t taking;
    _Atomic uint64_t taking_head; /* head the announced batch was peeked at */
    _Atomic uint64_t taking_next; /* head after it */
} __attribute__((aligned(32))) pq_ring_slot;

/* One epoch (see the layout above). */
typedef struct pq_ring_epoch {
    _Atomic uint64_t start; /* its first position */
    _Atomic uint64_t level; /* the region it runs in */
} pq_ring_epoch;

typedef struct pq_ring_ctl {
    /* Producers' line: tail and message count only change under claim_lock. */
    PQ_ALIGNED_LINE pthread_mutex_t claim_lock;
    _Atomic uint64_t tail;      /* end of the claimed records */
    _Atomic uint64_t tail_msgs; /* messages claimed, ever */
    /* The claim in progress, for a lock holder that dies inside it
     * (EOWNERDEAD): the tail it is about to publish (0: none) and
     * tail_msgs before it, so the next holder can undo a count that was
     * bumped for records that were never published. */
    _Atomic uint64_t claim_tail;
    _Atomic uint64_t claim_msgs;
    /* The current epoch's number (pq_ring_epoch.c): claims go into it.
     * Written under claim_lock (release: its entry in epochs[] and its
     * level's extent are written before); next to tail, which readers
     * load right before it. */
    _Atomic uint64_t epoch;
    /* Consumers' line. head and head_msgs are one 16-aligned pair that
     * pq_ring_consume moves with one double-width CAS (pq_ring.c). */
    PQ_ALIGNED_LINE _Atomic uint64_t head; /* start of the oldest unread record */
    _Atomic uint64_t head_msgs;            /* messages passed by head, ever */
    PQ_ALIGNED_LINE pq_event readable;     /* consumers park here */
    PQ_ALIGNED_LINE pq_event writable;     /* producers park here */
    PQ_ALIGNED_LINE pq_event tasks_done;   /* JoinableQueue.join parks here */
    _Atomic int64_t unfinished_tasks;
    /* Nonzero once a handle of this queue left its creator (pickled, or
     * opened by name): the creator's close() must then not unlink an
     * unnamed queue's name (pq_ring_mark_shared). Only ever set. */
    _Atomic uint32_t shared;
    PQ_ALIGNED_LINE _Atomic uint64_t counters[PQ_COUNTERS];
    /* Two slots per cache line; pq_ring_take claims them so that the
     * first PQ_RING_SLOTS / 2 consumers get a line each. */
    PQ_ALIGNED_LINE pq_ring_slot slots[PQ_RING_SLOTS];
    /* Epoch k is epochs[k % PQ_RING_EPOCHS] while it may be live; written
     * under claim_lock before ctl->epoch publishes it, never changed after
     * (until its entry is reused by epoch k + PQ_RING_EPOCHS, when k is
     * long dead). */
    PQ_ALIGNED_LINE pq_ring_epoch epochs[PQ_RING_EPOCHS];
    /*
     * Per level: how much of its region, from its start, has shmem pages
     * behind it (pq_ring_reserve.c): regions are sparse and a lap of the
     * ring backs them chunk by chunk before writing there. Bits 0-31: the
     * extent in PQ_RING_EXTENT_UNIT; bits 32-63: the low 32 bits of the
     * epoch number that uses the level (levels >= 1: a grow resets the
     * extent to 0 with the new tag, since a trim may have emptied the
     * region, and a late pq_ring_reserve for an older epoch must not raise
     * it; level 0 is never emptied and its tag is not checked).
     */
    _Atomic uint64_t level_reserved[PQ_RING_LEVELS];
    /* Bit l: level l's region may have pages that a trim should give back.
     * Set by a grow (under claim_lock), and outside it by whatever gave a
     * dead level pages late: a producer's populate (pq_ring_reserve), a
     * reader that read there and then found head moved (pq_ring_mark_read);
     * cleared by pq_ring_trim, under claim_lock, before it empties the
     * region (a mark after the clear survives: see pq_ring_trim). */
    _Atomic uint64_t dirty_levels;
} pq_ring_ctl;

_Static_assert(PQ_RING_CTL_OFFSET + sizeof(pq_ring_ctl) <= PQ_RING_DATA_OFFSET,
               "ring control block too big");
_Static_assert(offsetof(pq_ring_ctl, head) % 16 == 0 && PQ_RING_CTL_OFFSET % 16 == 0 &&
                   offsetof(pq_ring_ctl, head_msgs) == offsetof(pq_ring_ctl, head) + 8,
               "head and head_msgs must be a 16-aligned pair");
_Static_assert(sizeof(pq_ring_slot) == 32 && offsetof(pq_ring_ctl, slots) % 16 == 0 &&
                   offsetof(pq_ring_slot, taking) == offsetof(pq_ring_slot, owner) + 8,
               "a slot's owner and taking must be a 16-aligned pair");

/* A process-local view of a mapped queue segment. */
typedef struct pq_ring {
    pq_segment_header *hdr;
    pq_ring_ctl *ctl;
    uint8_t *data;
    uint64_t capacity; /* of level 0, the smallest region */
    uint64_t mask;
    uint64_t maxsize;
    uint64_t max_payload; /* largest payload one record can hold */
    /*
     * Claims may end at positions up to here without backing more of the
     * current epoch's region: its start plus its level's extent as last
     * seen, or UINT64_MAX once the whole region is backed (then the check
     * in pq_ring_claim never fails). Next to capacity and mask, which
     * every claim reads too.
     */
    uint64_t reserved_cache;
    /*
     * Last values seen of the other side's cursor (Agrona's head cache):
     * head and tail only grow, so a stale value errs on the safe side
     * (less room, fewer records) and the shared line is read again only
     * when the cached value is not enough. Process-local; a pq_ring view
     * must not be used by two threads at once.
     */
    uint64_t head_cache;
    uint64_t tail_cache;
    /*
     * This view's process slot (pq_ring_take): its index (-1: none), the
     * owner word it was claimed with (0: not tried yet), pq_proc_forks
     * then (another value after a fork: the child claims its own slot),
     * and the messages taken since the last pq_ring_taken_done.
     */
    int slot;
    uint32_t held;
    uint64_t slot_owner;
    unsigned slot_forks; /* pq_proc_forks when the slot was claimed */
    /* How far the current epoch's region must be backed (bytes from its
     * start) for the claim that last failed with -ENOBUFS
     * (pq_ring_reserve's argument). */
    uint64_t reserve_need;
    /* Bytes of the data area (all levels) and the number of levels. */
    uint64_t span;
    unsigned nlevels;
    /* Set by a take/consume that emptied the queue in a grown epoch or
     * passed an epoch: the binding then calls pq_ring_trim (GIL released)
     * and clears it. */
    int trim_wanted;
    /* The epoch claims go into, as this view last saw it under the claim
     * lock (ep_n: its number, UINT64_MAX: none yet). pq_ring_payload and
     * pq_ring_commit use it for the positions of this view's last claim. */
    uint64_t ep_n;
    uint64_t ep_start;
    uint64_t ep_cap;
    unsigned ep_level;
    uint8_t *ep_base;
    /* The epoch of the position a consumer last read: [rd_start, rd_end)
     * (rd_end rd_start + 2^63: it was the current one), and rd_seen, the epoch
     * number read right after tail_cache was loaded. */
    uint64_t rd_seen;
    /* Epoch rd_seen's start and size: a tail must lie within its size
     * of max(head, start) (claims keep it so; more is a corrupt segment). */
    uint64_t rd_cur_start;
    uint64_t rd_cur_cap;
    uint64_t rd_start;
    uint64_t rd_end;
    uint64_t rd_cap;
    unsigned rd_level;
    uint8_t *rd_base;
    /* Levels this view read since its last consume that won (with
     * rd_level's): the ones to mark when a read turns out stale
     * (pq_ring_mark_read). */
    uint64_t rd_levels;
} pq_ring;

/* Positions are 64-bit counters compared modulo 2^64 (a ring may start
 * anywhere, and wraps): a is at or after b when a - b < 2^63. */
#define PQ_POS_HALF (1ull << 63)
static inline uint64_t pq_pos_max(uint64_t a, uint64_t b)
{
    return a - b < PQ_POS_HALF ? a : b;
}

/* Where a position lies (pq_ring_epoch_find). end: the next epoch's start,
 * or start + PQ_POS_HALF for the current epoch (no end yet). */
typedef struct pq_ring_where {
    uint64_t n, start, end, cap;
    unsigned level;
    uint8_t *base;
} pq_ring_where;

/* One readable record found by pq_ring_peek. */
typedef struct pq_ring_record {
    uint64_t pos;
    const uint8_t *payload;
    uint32_t len;
    uint8_t type;
} pq_ring_record;

/* What a pq_ring_peek saw, handed back to pq_ring_consume. */
typedef struct pq_ring_batch {
    uint64_t head;     /* head when peeked */
    uint64_t next;     /* head after the records returned */
    uint32_t count;    /* committed records returned */
    uint32_t skipped;  /* abandoned records passed over */
} pq_ring_batch;

typedef struct pq_ring_stats {
    uint64_t enqueued, dequeued, rejected, dropped, abandoned;
    uint64_t depth, depth_bytes, capacity, maxsize;
    uint32_t waiting_producers, waiting_consumers;
    int64_t unfinished_tasks;
    /* Of abandoned: messages taken by consumers that died with them (the
     * rest are records whose producer died). */
    uint64_t abandoned_taken;
} pq_ring_stats;

/* How many levels a ring whose first region has `capacity` bytes may have:
 * as many as PQ_RING_SPAN_MAX of regions allow (at least 1, at most
 * PQ_RING_LEVELS). */
static inline unsigned pq_ring_max_levels(uint64_t capacity)
{
    unsigned n = 1;
    /* bounded: PQ_RING_LEVELS iterations; capacity <= 2^40, so the
     * products stay below 2^61. */
    while (n < PQ_RING_LEVELS && capacity * ((2ull << n) - 1) <= PQ_RING_SPAN_MAX)
        n++;
    return n;
}

/* Bytes of the data area (all regions) of a ring of `capacity` bytes with
 * `nlevels` levels. */
static inline uint64_t pq_ring_span(uint64_t capacity, unsigned nlevels)
{
    return capacity * ((1ull << nlevels) - 1);
}

/* Offset of level l's region in the data area. */
static inline uint64_t pq_ring_level_offset(uint64_t capacity, unsigned level)
{
    return capacity * ((1ull << level) - 1);
}

/* The bits of a view's levels >= 1 in ctl->dirty_levels (nlevels <=
 * PQ_RING_LEVELS < 64). */
static inline uint64_t pq_ring_grown_levels(const pq_ring *r)
{
    return ((1ull << r->nlevels) - 1) & ~1ull;
}

/* Bytes a segment with a ring of `capacity` bytes that never grows needs
 * (one level: a claim that finds it full gets -EAGAIN). */
static inline uint64_t pq_ring_segment_size(uint64_t capacity)
{
    return PQ_RING_DATA_OFFSET + capacity;
}

/* Bytes a segment with a ring whose first region has `capacity` bytes and
 * that grows through pq_ring_max_levels levels needs: its file size
 * (sparse: only what is used gets pages). pq_ring_create gives a ring as
 * many levels as the size it is handed holds. */
static inline uint64_t pq_ring_growable_size(uint64_t capacity)
{
    return PQ_RING_DATA_OFFSET + pq_ring_span(capacity, pq_ring_max_levels(capacity));
}

/* Bytes one record with a payload of len bytes takes in the data area. */
static inline uint64_t pq_ring_record_size(uint64_t len)
{
    return pq_record_size(len);
}

/*
 * Initialize a fresh zeroed segment of `size` bytes as a queue with a data
 * area of `capacity` bytes (a power of two, PQ_RING_MIN_CAPACITY..MAX).
 * params (nparams <= PQ_RING_NPARAMS - PQ_RING_PARAM_USER0) are stored as
 * USER0... Publishes the segment READY on success.
 */
int pq_ring_create(void *base, size_t size, uint64_t capacity, uint64_t maxsize,
                   const uint64_t *user_params, int n_user_params);

/*
 * pq_ring_create for a segment whose data area has pages behind only its
 * first `backed` bytes (the rest of the file is sparse): producers back
 * the rest with pq_ring_reserve before writing there. backed >= capacity
 * (or what pq_ring_create passes) means all of it.
 */
int pq_ring_create_backed(void *base, size_t size, uint64_t capacity, uint64_t maxsize,
                          const uint64_t *user_params, int n_user_params, uint64_t backed);

/* Attach to a mapped queue segment after validating it (base must be
 * 16-aligned: -EINVAL otherwise; mappings are page-aligned). A view whose
 * open failed holds no slot: pq_ring_release_slot on it does nothing. */
int pq_ring_open(pq_ring *r, void *base, size_t size);

/* --- producers ------------------------------------------------------- */

/*
 * Claim room for n records of payload lengths lens[0..n) in one step and
 * write their positions to pos_out. 0 on success; -EAGAIN when the ring
 * (or maxsize) has no room now; -EMSGSIZE when the batch can never fit;
 * -ENOBUFS when the records would lie in a part of the data area that has
 * no pages behind it yet: call pq_ring_reserve(r, r->reserve_need) (not
 * under any lock: it allocates memory) and claim again;
 * -EINVAL on bad arguments; -ENOTRECOVERABLE if the claim lock is broken.
 * Every claimed record must then be committed (or the process dies and the
 * record is abandoned by pq_ring_repair_head).
 */
int pq_ring_claim(pq_ring *r, const uint32_t *lens, uint32_t n, uint64_t *pos_out);

/* --- epochs: growth and trimming (pq_ring_epoch.c) --------------------- */

/*
 * Find the epoch that holds position p for a reader that loaded tail
 * (acquire, p below it) and then n = ctl->epoch. Reads only the shared
 * table (bounded: PQ_RING_EPOCHS entries). 0; -ESTALE when p is older
 * than every epoch kept (the reader's head is stale); PQ_ERR_CORRUPT when
 * the table is inconsistent (a level out of range, starts that go back).
 * Whatever the table holds, the region found lies inside the data area.
 */
int pq_ring_epoch_find(const pq_ring *r, uint64_t n, uint64_t p, pq_ring_where *w);

/* A read of ring memory at head position h, in level `level`, is done:
 * if head has moved meanwhile, mark the level (>= 1) as maybe having
 * pages (a stale read of a hole of a level a trim emptied gives it one).
 * For the readers outside pq_ring_peek (the wait's check, the repair). */
void pq_ring_mark_if_moved(pq_ring_ctl *c, uint64_t h, unsigned level);

/* Under the claim lock: point the view's producer epoch (ep_*) and
 * reserved_cache at epoch n, the current one. 0 or PQ_ERR_CORRUPT. */
int pq_ring_epoch_load(pq_ring *r, uint64_t n);

/* Under the claim lock, with the ring full at tail t: start epoch
 * ep_n + 1 at t, one level up, and point ep_* at it. 0; -EAGAIN at the
 * last level. */
int pq_ring_grow(pq_ring *r, uint64_t t);

/*
 * Give back memory the ring no longer needs: take the claim lock (without
 * waiting: 0 when it is busy), start over at level 0 when the queue is
 * empty in a grown epoch, and empty the regions of dead epochs
 * (MADV_REMOVE). Call without language locks (it may free many pages).
 * Returns the number of regions emptied, or -errno.
 */
int pq_ring_trim(pq_ring *r);

/* --- lazy reservation of the data area (pq_ring_reserve.c) ------------- */

/* The data area is backed a chunk at a time during the ring's first lap. */
#define PQ_RING_RESERVE_CHUNK (1u << 20)

/*
 * Give the region of the view's current epoch (ep_*) pages up to at least
 * `need` bytes from its start (rounded up to PQ_RING_RESERVE_CHUNK, at
 * most its size), then publish the new extent in ctl->level_reserved
 * (unless a newer epoch took the level meanwhile). 0 on success; -ENOSPC when
 * the memory behind the segment (/dev/shm) has no room: nothing is
 * published, and nothing is written to the ring; -EOPNOTSUPP when the
 * kernel cannot populate shared memory without touching it (older than
 * Linux 5.14: segments must then be created fully backed, see
 * pq_ring_populate_supported); other -errno from madvise.
 */
int pq_ring_reserve(pq_ring *r, uint64_t need);

/* 1 when this kernel can back pages of a shared mapping without writing
 * to them (MADV_POPULATE_WRITE), 0 when not (then create every segment
 * fully backed). Probes once per process on a private anonymous page. */
int pq_ring_populate_supported(void);

/* The payload of a record of this view's last successful claim (it lies
 * in the epoch that claim saw, ep_*). */
static inline uint8_t *pq_ring_payload(const pq_ring *r, uint64_t pos)
{
    return r->ep_base + ((pos - r->ep_start) & (r->ep_cap - 1)) + PQ_RECORD_HEADER;
}

/* Make a claimed record readable with the given payload type. */
void pq_ring_commit(pq_ring *r, uint64_t pos, uint8_t type);

/* Wake consumers (up to n) after commits; no syscall when none waits. */
void pq_ring_notify_readable(pq_ring *r, uint32_t n);

/* --- consumers ------------------------------------------------------- */

/*
 * Look at up to max committed records from head without taking them.
 * Returns the number of records written to out (>= 0; 0 with
 * batch->next != batch->head means only abandoned or padding records were
 * found: consume to pass them); -EAGAIN when empty; -EINPROGRESS when the
 * oldest record is still being written; -ESTALE when head moved while
 * looking (retry); PQ_ERR_CORRUPT when the ring is inconsistent.
 * The payload pointers are valid until pq_ring_consume fails or returns.
 */
int pq_ring_peek(pq_ring *r, pq_ring_record *out, uint32_t max, pq_ring_batch *batch);

/*
 * Take what pq_ring_peek saw: 0 on success, -EAGAIN when another consumer
 * took it first (what was copied out must be discarded). Wakes waiting
 * producers. Nothing is announced: for records that are not handed to
 * anyone (dropped by drop-oldest, or only abandoned/padding records), and
 * for callers that do not care about the accounting below.
 */
int pq_ring_consume(pq_ring *r, const pq_ring_batch *batch);

/*
 * pq_ring_consume for messages that will be handed over: announces the
 * batch in this process's slot first (claimed at the first take; none
 * when all PQ_RING_SLOTS are held by live processes, and then no
 * accounting), so that if the process dies before pq_ring_taken_done the
 * messages are counted as abandoned. Takes of one operation (get_many's
 * batches) accumulate until pq_ring_taken_done; every successful take must
 * be followed by one, on every path.
 */
int pq_ring_take(pq_ring *r, const pq_ring_batch *batch);

/*
 * What pq_ring_peek saw will not be taken (copying it out failed: out of
 * memory). When head has moved since the peek, the read may have been of
 * a level a trim emptied meanwhile, and given it pages: they are marked
 * for the next trim (pq_ring_mark_read), as a take that loses its CAS
 * does. Nothing else changes: the records stay for the next peek.
 */
void pq_ring_peek_abandon(pq_ring *r, const pq_ring_batch *batch);

/* The messages taken since the last call have been handed over (or failed
 * to decode, raising): nothing is outstanding any more. */
void pq_ring_taken_done(pq_ring *r);

/*
 * Count the messages that dead consumers took and did not hand over
 * (PQ_COUNT_ABANDONED_TAKEN) and free their slots. Looks only at slots
 * with something announced, so it costs a /proc read per consumer that is
 * inside a take right now, and nothing else. Returns the number counted.
 */
int pq_ring_reap_dead_consumers(pq_ring *r);

/* Give this view's slot back (closing the handle); in a forked child that
 * inherited the view, only forgets it. */
void pq_ring_release_slot(pq_ring *r);

/*
 * If the oldest record is CLAIMED by a process that is dead, mark it
 * ABANDONED so consumers pass it. 1 when repaired, 0 when there was
 * nothing to repair, -errno when liveness could not be told.
 */
int pq_ring_repair_head(pq_ring *r);

/* --- waiting --------------------------------------------------------- */

/*
 * Wait until a committed record may be at head: spin, then yield, for up
 * to spin_ns (pq_spin_until), then park. 0 when worth retrying, -ETIMEDOUT at deadline_ns (monotonic, < 0:
 * none), -EINTR on a signal. Call without holding language locks.
 */
int pq_ring_wait_readable(pq_ring *r, int64_t deadline_ns, uint32_t spin_ns);

/*
 * Wait until head moves away from seen_head (room may have been made), or,
 * after this thread's pq_ring_claim failed on maxsize, until a consumer has
 * counted messages out since that claim looked. seen_head: pq_ring_head()
 * read before the failed claim, by the same thread.
 */
int pq_ring_wait_writable(pq_ring *r, uint64_t seen_head, int64_t deadline_ns, uint32_t spin_ns);

static inline uint64_t pq_ring_head(const pq_ring *r)
{
    return atomic_load_explicit(&r->ctl->head, memory_order_acquire);
}

/*
 * Shut the queue down (pq_shutdown.h): raise the segment's flag to how
 * (PQ_SHUTDOWN_DRAIN, or with PQ_SHUTDOWN_IMMEDIATE) and wake every parked
 * getter, putter and joiner in every process; the wait functions above
 * return 0 from then on (re-check pq_shutdown_state). Discarding what is
 * left (immediate) is the binding's: it takes records like a consumer.
 * Returns the flag before, or -EINVAL.
 */
int pq_ring_shutdown(pq_ring *r, uint32_t how);

/* --- joinable queues ------------------------------------------------- */

void pq_ring_tasks_add(pq_ring *r, int64_t n);
/* -EINVAL when there is no unfinished task (task_done called too often). */
int pq_ring_task_done(pq_ring *r);
/* Wait until no task is unfinished: 0, -ETIMEDOUT, -EINTR. */
int pq_ring_wait_tasks_done(pq_ring *r, int64_t deadline_ns);

/* --- lifetime of unnamed queues ---------------------------------------- */

/*
 * Record that a handle of this queue may exist outside the creating
 * handle (it was pickled, or opened by name). Relaxed: the flag orders
 * nothing else; a creator that reads it stale only decides whether to
 * unlink the segment's name, and a name is only ever unlinked by the
 * creator's own close, after which openers get a clear SegmentNotFound.
 */
static inline void pq_ring_mark_shared(pq_ring *r)
{
    atomic_store_explicit(&r->ctl->shared, 1u, memory_order_relaxed);
}

static inline int pq_ring_is_shared(const pq_ring *r)
{
    return atomic_load_explicit(&r->ctl->shared, memory_order_relaxed) != 0;
}

/* --- statistics ------------------------------------------------------ */

void pq_ring_count(pq_ring *r, enum pq_ring_counter which, uint64_t n);
void pq_ring_get_stats(const pq_ring *r, pq_ring_stats *s);
/* Messages in the queue (claimed and not yet passed by head). */
uint64_t pq_ring_depth(const pq_ring *r);

#endif /* PQ_RING_H */
