/*
 * pq_ring.h - the multi-producer multi-consumer ring of variable-size
 * records that backs pyqueue.Queue.
 *
 * Layout of a queue segment:
 *   [0, 256)            pq_segment_header (kind PQ_KIND_QUEUE)
 *   [256, 4096)         pq_ring_ctl: cursors, claim lock, events, counters,
 *                       process slots
 *   [4096, 4096 + cap)  data area: records, cap a power of two
 *
 * A record is a 16-byte header followed by the payload, padded to 16 bytes.
 * Positions (head, tail) are ever-growing 64-bit byte counters; the offset
 * in the data area is pos & (cap - 1). A record never wraps: when it does
 * not fit before the end of the data area a PADDING record fills the rest.
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
    /* Bytes of the data area, from its start, known to have shmem pages
     * behind them (pq_ring_reserve.c): a segment is created sparse beyond
     * its first chunk and the first lap of the ring backs the rest chunk
     * by chunk before writing there. Only grows (atomic max), up to the
     * capacity; any process may raise it. */
    _Atomic uint64_t reserved;
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
    uint64_t capacity;
    uint64_t mask;
    uint64_t maxsize;
    uint64_t max_payload; /* largest payload one record can hold */
    /*
     * Claims may end at positions up to here without backing more of the
     * data area: ctl->reserved as last seen, or UINT64_MAX once the whole
     * data area is backed (then the check in pq_ring_claim never fails).
     * Next to capacity and mask, which every claim reads too.
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
    /* How far the data area must be backed for the claim that last failed
     * with -ENOBUFS (pq_ring_reserve's argument). */
    uint64_t reserve_need;
} pq_ring;

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

/* Bytes a segment with a data area of `capacity` bytes needs. */
static inline uint64_t pq_ring_segment_size(uint64_t capacity)
{
    return PQ_RING_DATA_OFFSET + capacity;
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

/* --- lazy reservation of the data area (pq_ring_reserve.c) ------------- */

/* The data area is backed a chunk at a time during the ring's first lap. */
#define PQ_RING_RESERVE_CHUNK (1u << 20)

/*
 * Give the data area pages up to at least `need` bytes from its start
 * (rounded up to PQ_RING_RESERVE_CHUNK, at most the capacity), then
 * publish the new extent in ctl->reserved. 0 on success; -ENOSPC when
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

static inline uint8_t *pq_ring_payload(const pq_ring *r, uint64_t pos)
{
    return r->data + (pos & r->mask) + PQ_RECORD_HEADER;
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
