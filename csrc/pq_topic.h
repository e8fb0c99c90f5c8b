/*
 * pq_topic.h - a broadcast ring of variable-size records with one cursor
 * per subscriber: the shared-memory core of pyqueue.Topic.
 *
 * Layout of a topic segment:
 *   [0, 256)            pq_segment_header (kind PQ_KIND_TOPIC)
 *   [256, 4096)         pq_topic_ctl: claim lock, head/tail, events,
 *                       subscriber table
 *   [4096, 4096 + cap)  data area: records as in pq_ring (16-byte header
 *                       ctl = len | type | state | tag, owner word)
 *
 * Publishers claim under a robust process-shared mutex, copy, commit
 * (release) and notify, exactly as pq_ring's producers. The claim also
 * moves `head`, the oldest record not yet overwritten, past the records
 * the claim will overwrite. In lossless mode a claim that would move head
 * past the cursor of a subscriber fails with -EAGAIN (the publisher waits);
 * in lossy mode it never waits.
 *
 * Subscribers read from their own cursor: peek (look at the records at the
 * cursor), copy out, then pq_topic_advance, which validates the copy (lossy
 * mode: head has not passed the cursor, i.e. nobody started overwriting
 * the records; see docs/design.md "Topic") and stores the cursor. A lapped
 * lossy subscriber jumps to head and counts what it missed in `lost`.
 * Return values: 0 / >= 0 counts, or -errno; nothing prints.
 */
#ifndef PQ_TOPIC_H
#define PQ_TOPIC_H

#include <pthread.h>

#include "pq_common.h"
#include "pq_refs.h"
#include "pq_segment.h"
#include "pq_wait.h"

#define PQ_TOPIC_CTL_OFFSET PQ_SEGMENT_HEADER_BYTES
#define PQ_TOPIC_DATA_OFFSET 4096u
#define PQ_TOPIC_MIN_CAPACITY 4096u
#define PQ_TOPIC_MAX_CAPACITY (1ull << 40)
#define PQ_TOPIC_SUBS 64

enum pq_topic_mode {
    PQ_TOPIC_LOSSLESS = 0,
    PQ_TOPIC_LOSSY = 1,
};

/* Creation parameters kept in pq_segment_header.params. */
enum pq_topic_param {
    PQ_TOPIC_PARAM_CAPACITY = 0,
    PQ_TOPIC_PARAM_MODE = 1,
    PQ_TOPIC_PARAM_USER0 = 2, /* free for the binding (flags, ...) */
    PQ_TOPIC_NPARAMS = 6,
};

enum pq_topic_start {
    PQ_TOPIC_START_LATEST = 0,   /* only records published from now on */
    PQ_TOPIC_START_EARLIEST = 1, /* the oldest record still in the ring */
};

/* One subscriber's entry in the shared table. Written under the claim
 * lock (owner, and cursor/msgs/lost when the slot is taken or a lapped
 * subscriber jumps) or by the owner alone (cursor, msgs, lost). */
typedef struct pq_topic_slot {
    _Atomic uint64_t owner;  /* pq_proc_pack of the subscriber; 0 = free */
    _Atomic uint64_t cursor; /* position of the next record to read */
    _Atomic uint64_t msgs;   /* messages (non-padding records) before cursor */
    _Atomic uint64_t lost;   /* messages it missed by being lapped (lossy) */
} pq_topic_slot;

typedef struct pq_topic_ctl {
    PQ_ALIGNED_LINE pthread_mutex_t claim_lock;
    _Atomic uint64_t tail;      /* end of the claimed records */
    _Atomic uint64_t tail_msgs; /* messages claimed, ever */
    _Atomic uint64_t head;      /* oldest record not (being) overwritten */
    _Atomic uint64_t head_msgs; /* messages before head */
    _Atomic uint32_t nsubs;     /* slots held (statistics) */
    PQ_ALIGNED_LINE pq_event readable; /* subscribers park here */
    PQ_ALIGNED_LINE pq_event writable; /* lossless publishers park here */
    PQ_ALIGNED_LINE pq_topic_slot slots[PQ_TOPIC_SUBS];
} pq_topic_ctl;

_Static_assert(PQ_TOPIC_CTL_OFFSET + sizeof(pq_topic_ctl) <= PQ_TOPIC_DATA_OFFSET,
               "topic control block too big");

/* A process-local view of a mapped topic segment. */
typedef struct pq_topic {
    pq_segment_header *hdr;
    pq_topic_ctl *ctl;
    uint8_t *data;
    uint64_t capacity;
    uint64_t mask;
    uint64_t max_payload; /* a quarter of the ring less a header */
    int mode;
} pq_topic;

/* A process-local subscription: the slot and this process's copy of it. */
typedef struct pq_topic_sub {
    int slot;        /* -1: none */
    uint64_t owner;
    uint64_t cursor;
    uint64_t msgs;
    uint64_t lost;
} pq_topic_sub;

/* A record found by pq_topic_peek. */
typedef struct pq_topic_record {
    uint64_t pos;
    const uint8_t *payload;
    uint32_t len;
    uint8_t type;
} pq_topic_record;

/* What a peek saw, for pq_topic_advance. */
typedef struct pq_topic_batch {
    uint64_t start;      /* cursor when peeked */
    uint64_t next;       /* cursor after the records looked at */
    uint64_t next_msgs;  /* msgs after them */
    uint32_t count;      /* committed records returned */
    uint32_t skipped;    /* abandoned records passed over */
} pq_topic_batch;

/*
 * Out-of-band records (docs/design.md, "Topic: large messages"): a
 * committed record whose type has PQ_TOPIC_TYPE_OOB set carries a
 * reference to a segment of its own (the binding's format; at most
 * PQ_TOPIC_REF_MAX bytes are copied). The core never opens it: it reports
 * the references of the records head passes (claim, trim), so that the
 * caller unlinks their segments once no subscriber can still read them.
 * The buffer type is pq_refs.h's, shared with the memory-mode log.
 *
 * A pending reclaim: the claim or trim that passes such records moves head
 * past them and reports them, and they stay intact (no claim overwrites
 * them) until a caller comes back with refs->reclaim - the value the core
 * set when it reported them - saying it unlinked their segments. Until
 * then every claim and trim reports them again (-ENOBUFS / their count),
 * so that a caller killed before its unlinks (SIGKILL, or an exception
 * in the binding) leaves no segment behind: the next one unlinks them.
 * Set refs->reclaim to 0 before the first call; leave it as the core set
 * it between calls of one caller.
 */
#define PQ_TOPIC_TYPE_OOB PQ_TYPE_OOB
#define PQ_TOPIC_REF_MAX PQ_REF_MAX
typedef pq_ref pq_topic_ref;
typedef pq_refs pq_topic_refs;

static inline uint64_t pq_topic_segment_size(uint64_t capacity)
{
    return PQ_TOPIC_DATA_OFFSET + capacity;
}

/* Initialize a fresh zeroed segment; publishes it READY. */
int pq_topic_create(void *base, size_t size, uint64_t capacity, int mode,
                    const uint64_t *user_params, int n_user_params);
int pq_topic_open(pq_topic *t, void *base, size_t size);

/* --- publishers ------------------------------------------------------ */

/*
 * Claim room for n records. 0; -EAGAIN when a lossless topic has a live
 * (or not yet evicted) subscriber that has not read what the claim would
 * overwrite (*needed_head, if not NULL, is the cursor every subscriber
 * must reach: pass it to pq_topic_wait_writable / pq_topic_evict_dead);
 * -EMSGSIZE; -EINVAL; PQ_ERR_CORRUPT; -ENOTRECOVERABLE.
 */
int pq_topic_claim(pq_topic *t, const uint32_t *lens, uint32_t n, uint64_t *pos_out,
                   uint64_t *needed_head);
/*
 * pq_topic_claim that also reports, in refs, the out-of-band records whose
 * space it reclaims (head passes them: every subscriber read them, or a
 * lossy topic overwrites them). -ENOBUFS: references reported (a pending
 * reclaim, above: this one's, or one a caller left behind), nothing
 * claimed: unlink them and claim again with refs->reclaim as the core set
 * it. A claim that returns 0 reports nothing. -EINVAL also when refs has
 * no room for a pending reclaim. refs NULL: as pq_topic_claim (records
 * passed, and a pending reclaim, are not reported: their segments are
 * left to `pyqueue gc`).
 */
int pq_topic_claim_refs(pq_topic *t, const uint32_t *lens, uint32_t n, uint64_t *pos_out,
                        uint64_t *needed_head, pq_topic_refs *refs);
static inline uint8_t *pq_topic_payload(const pq_topic *t, uint64_t pos)
{
    return t->data + (pos & t->mask) + 16u;
}
void pq_topic_commit(pq_topic *t, uint64_t pos, uint8_t type);
/* Wake every parked subscriber (none parked: no system call). */
void pq_topic_notify_readable(pq_topic *t);

/* Wait until every subscriber's cursor is at or past needed_head (or its
 * slot is freed): 0 worth retrying, -ETIMEDOUT, -EINTR. */
int pq_topic_wait_writable(pq_topic *t, uint64_t needed_head, int64_t deadline_ns,
                           uint32_t spin_ns);

/* Free the slots of dead subscribers whose cursor is behind needed_head
 * (UINT64_MAX: every dead subscriber). Returns how many were evicted, or
 * the lock's error (PQ_ERR_LOCK_BUSY...) when it could evict none. */
int pq_topic_evict_dead(pq_topic *t, uint64_t needed_head);

/* --- subscribers ----------------------------------------------------- */

/* Take a slot: 0; -ENOSPC when all PQ_TOPIC_SUBS slots are held. */
int pq_topic_subscribe(pq_topic *t, pq_topic_sub *s, int start);
/* Give the slot back: 0 (also when there is none), or the lock's error
 * (PQ_ERR_LOCK_BUSY in the bindings), the slot still held: call again. */
int pq_topic_unsubscribe(pq_topic *t, pq_topic_sub *s);

/*
 * Look at up to max committed records at the subscriber's cursor. >= 0
 * records (0 with b->next != b->start: only abandoned/padding records,
 * advance to pass them); -EAGAIN nothing new; -EINPROGRESS the record at
 * the cursor is being written; -EOWNERDEAD the slot was evicted. A lapped
 * lossy subscriber is moved to head first (its lost count grows).
 */
int pq_topic_peek(pq_topic *t, pq_topic_sub *s, pq_topic_record *out, uint32_t max,
                  pq_topic_batch *b);

/* After copying what peek returned: 0 and the cursor moves on; -ESTALE
 * when the records were overwritten meanwhile (lossy; discard, peek again). */
int pq_topic_advance(pq_topic *t, pq_topic_sub *s, const pq_topic_batch *b);

/* Wait until something may be readable at the subscriber's cursor. */
int pq_topic_wait_readable(pq_topic *t, const pq_topic_sub *s, int64_t deadline_ns,
                           uint32_t spin_ns);

/* If the record at the cursor is CLAIMED by a dead publisher, mark it
 * ABANDONED: 1 repaired, 0 nothing to do, -errno. */
int pq_topic_repair(pq_topic *t, const pq_topic_sub *s);

/*
 * Release the out-of-band records every subscriber has passed
 * (pq_topic_refs.c): head moves to the end of the last committed
 * out-of-band record below min(limit, tail, every held slot's cursor) -
 * never further, so plain records stay retained for "earliest"
 * subscribers - and their references are appended to refs, as a pending
 * reclaim (above; or a pending one is reported again). Returns how many
 * were reported (unlink them and call again with refs->reclaim as the core
 * set it: that ends the reclaim, and there may be more), or the lock's
 * error / PQ_ERR_CORRUPT; -EINVAL when limit is not a record boundary
 * (pass a cursor) or refs has no room for a pending reclaim. limit
 * UINT64_MAX: no limit.
 */
int pq_topic_trim(pq_topic *t, uint64_t limit, pq_topic_refs *refs);

/*
 * The references of the committed out-of-band records still in the ring,
 * from *from (or head, if head is past it) to tail, under the lock (for
 * `pyqueue gc`: a segment named by one is live). 0 all reported; 1 refs
 * is full, *from set where to go on; the lock's error; PQ_ERR_CORRUPT.
 */
int pq_topic_scan_refs(pq_topic *t, uint64_t *from, pq_topic_refs *refs);

/* Messages published (claimed) and not yet read by s. */
uint64_t pq_topic_lag(const pq_topic *t, const pq_topic_sub *s);

typedef struct pq_topic_stats {
    uint64_t published, retained, capacity;
    uint32_t subscribers, waiting_publishers, waiting_subscribers;
} pq_topic_stats;
void pq_topic_get_stats(const pq_topic *t, pq_topic_stats *st);

/* One subscriber slot, for monitoring (pq_topic_subs.c). */
typedef struct pq_topic_sub_stats {
    int32_t pid;   /* the subscriber's pid (maybe dead, not yet evicted) */
    uint64_t lag;  /* messages published it has not read */
    uint64_t lost; /* messages it missed by being lapped (lossy) */
    uint64_t read; /* messages before its cursor */
} pq_topic_sub_stats;
/* 0 and *out filled when slot (0..PQ_TOPIC_SUBS-1) is held; -ENOENT when
 * it is free; -EINVAL out of range. Lock-free, never waits. */
int pq_topic_get_sub_stats(const pq_topic *t, int slot, pq_topic_sub_stats *out);

/*
 * Shut the topic down (pq_shutdown.h): raise the segment's flag to how
 * (PQ_SHUTDOWN_DRAIN, or with PQ_SHUTDOWN_IMMEDIATE) and wake every parked
 * waiter in every process; the wait functions return 0 from then on
 * (callers re-check pq_shutdown_state). Returns the flag before, or -EINVAL.
 */
int pq_topic_shutdown(pq_topic *t, uint32_t how);

#endif /* PQ_TOPIC_H */
