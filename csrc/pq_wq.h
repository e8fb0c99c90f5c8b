/*
 * pq_wq.h - the acknowledged work queue behind pyqueue.WorkQueue: every
 * message has a delivery state, as the records of a Kafka share group
 * (KIP-932) do:
 *
 *   CLAIMED (a producer writes it) -> AVAILABLE (from at_ns on: delay)
 *     -> ACQUIRED (owner, visibility deadline, delivery count + 1)
 *          -> DONE (acked)
 *          -> AVAILABLE again: nack (maybe delayed), the deadline passed,
 *             or the owner died
 *          -> DEAD (rejected, or out of deliveries): owned by the process
 *             that moves it to the dead-letter queue, then DONE
 *
 * A message keeps its bytes until it is DONE: the head (the oldest message
 * not done) only passes done ones, and space is reused behind it. So a
 * consumer that dies holding a message costs nothing: the message becomes
 * available again when its deadline passes or someone sees its owner dead
 * (pq_wq_reap), with its delivery count raised.
 *
 * Layout of a segment (kind PQ_KIND_WORKQ):
 *   [0, 256)     pq_segment_header (params below)
 *   [256, 4096)  pq_wq_ctl
 *   [4096, ...)  pq_wq_slot[slots]: message id i lives in slot i & (slots - 1)
 *   then         the dedup table (pq_wq_dedup.h): dedup_slots keys put within
 *                the window, whatever became of their messages, and its index
 *   then         data: capacity bytes of payloads (16-aligned, never wrapping)
 *
 * All state changes but a producer's commit (a CAS) run under one robust
 * process-shared lock; producers copy their payload and consumers copy
 * theirs out without it (the bytes of a message that is not DONE are never
 * reused). A get starts its scan at a hint (`scan`: no message below it
 * can be delivered before `scan_wake`), so it does not walk again past
 * the messages held or delayed. Ids are ever-growing 64-bit.
 * Returns: >= 0, or -errno; nothing prints.
 */
#ifndef PQ_WQ_H
#define PQ_WQ_H

#include <pthread.h>

#include "pq_common.h"
#include "pq_segment.h"
#include "pq_wait.h"
#include "pq_wq_dedup.h"

#define PQ_WQ_CTL_OFFSET PQ_SEGMENT_HEADER_BYTES
#define PQ_WQ_SLOTS_OFFSET 4096u
#define PQ_WQ_MIN_CAPACITY 4096u
#define PQ_WQ_MAX_CAPACITY (1ull << 40)
#define PQ_WQ_MAX_SLOTS (1u << 24)
#define PQ_WQ_ALIGN 16u
#define PQ_WQ_USER_BYTES 512u

enum pq_wq_param {
    PQ_WQ_PARAM_CAPACITY = 0,
    PQ_WQ_PARAM_SLOTS = 1,
    PQ_WQ_PARAM_DEDUP_SLOTS = 2,
    PQ_WQ_PARAM_VISIBILITY_NS = 3,
    PQ_WQ_PARAM_MAX_DELIVERIES = 4, /* 0: no limit */
    PQ_WQ_PARAM_DEDUP_WINDOW_NS = 5,
    PQ_WQ_PARAM_USER0 = 6,          /* free for the binding (flags) */
    PQ_WQ_PARAM_MAX_PAYLOAD = 7,    /* 0: a quarter of capacity (at most that) */
    PQ_WQ_NPARAMS = 8,
};

enum pq_wq_state {
    PQ_WQ_FREE = 0,
    PQ_WQ_CLAIMED = 1,
    PQ_WQ_AVAILABLE = 2,
    PQ_WQ_ACQUIRED = 3,
    PQ_WQ_DEAD = 4,
    PQ_WQ_DONE = 5,
};

/* Why a message was last made available again, or why it is DEAD. */
enum pq_wq_reason {
    PQ_WQ_REASON_NONE = 0,
    PQ_WQ_REASON_NACK = 1,
    PQ_WQ_REASON_TIMEOUT = 2,    /* not acked within the visibility timeout */
    PQ_WQ_REASON_DIED = 3,       /* its consumer died holding it */
    PQ_WQ_REASON_REJECTED = 4,   /* reject(): straight to the dead-letter queue */
};

enum pq_wq_counter {
    PQ_WQ_ENQUEUED = 0,
    PQ_WQ_ACKED = 1,
    PQ_WQ_REDELIVERED = 2,   /* made available again after a delivery */
    PQ_WQ_DEAD_LETTERED = 3, /* moved out (to the dead-letter queue, or dropped) */
    PQ_WQ_DEDUPED = 4,       /* puts dropped as duplicates of a key */
    PQ_WQ_ABANDONED = 5,     /* claimed by a producer that died before committing */
    PQ_WQ_DEDUP_FULL = 6,    /* keyed puts that found the dedup table full (and waited) */
    PQ_WQ_DEAD_PARKED = 7,   /* moves to the dead-letter queue put off (it was full) */
    PQ_WQ_COUNTERS = 8,
};

typedef struct pq_wq_slot {
    _Atomic uint64_t id;         /* the message in the slot (while not FREE) */
    _Atomic uint32_t state;
    _Atomic uint32_t deliveries; /* times it has been acquired */
    _Atomic uint64_t owner;      /* pq_proc_pack: producer, consumer, or mover */
    _Atomic int64_t at_ns;       /* AVAILABLE: not before; ACQUIRED: deadline (monotonic) */
    uint64_t pos;                /* data position of the payload */
    uint32_t len;
    uint8_t type;                /* the payload's codec */
    uint8_t reason;              /* pq_wq_reason */
    uint16_t reserved;
    uint64_t enqueued_ms;        /* wall clock of the put */
    uint64_t dedup_entry;        /* 1 + ring position of its key's dedup entry; 0: none */
} pq_wq_slot;
_Static_assert(sizeof(pq_wq_slot) == 64, "pq_wq_slot is a cache line");

typedef struct pq_wq_ctl {
    PQ_ALIGNED_LINE pthread_mutex_t lock;
    _Atomic uint64_t head;     /* oldest id not DONE */
    _Atomic uint64_t tail;     /* the next id */
    _Atomic uint64_t head_pos; /* data position of head's payload (tail_pos when empty) */
    _Atomic uint64_t tail_pos; /* end of the payloads claimed */
    /* The scan hint (under the lock): every message in [head, scan) was
     * held, delayed, dead or done when a get passed it, none of them was
     * being written, and none can be delivered before scan_wake unless a
     * change under the lock (nack, extend, reap) lowers scan. */
    _Atomic uint64_t scan;
    _Atomic int64_t scan_wake;
    /* Waits: each event has a sequence word that the change it announces
     * bumps (release) before notifying, and a waiter waits for the word
     * to move past what it saw when it last found nothing (or no room). */
    PQ_ALIGNED_LINE pq_event readable; /* a message may have become available */
    _Atomic uint64_t readable_seq;      /* bumped by commits, nacks, reaps */
    pq_event writable;                  /* room may have been made */
    _Atomic uint64_t writable_seq;      /* bumped when the head moves */
    PQ_ALIGNED_LINE _Atomic uint64_t counters[PQ_WQ_COUNTERS];
    /* Opaque to the core, written at creation (the binding keeps the
     * dead-letter queue's name there). */
    uint32_t user_len;
    uint8_t user[PQ_WQ_USER_BYTES];
    PQ_ALIGNED_LINE pq_wq_dedup_ctl dedup; /* the dedup ring's positions */
} pq_wq_ctl;
_Static_assert(sizeof(pq_wq_ctl) <= PQ_WQ_SLOTS_OFFSET - PQ_WQ_CTL_OFFSET, "pq_wq_ctl fits");

/* A process-local view of a mapped work queue. */
typedef struct pq_wq {
    pq_segment_header *hdr;
    pq_wq_ctl *ctl;
    pq_wq_slot *slots;
    pq_wq_dedup_table dedup;
    uint8_t *data;
    uint64_t capacity;
    uint64_t mask;
    uint32_t nslots;
    uint32_t dedup_slots;
    int64_t visibility_ns;
    uint32_t max_deliveries;
    int64_t dedup_window_ns;
    uint64_t max_payload;      /* a quarter of the data area, or less (PQ_WQ_PARAM_MAX_PAYLOAD) */
} pq_wq;

/* What a consumer got (pq_wq_acquire). payload points into the data
 * area, valid until the message is DONE. */
typedef struct pq_wq_delivery {
    uint64_t id;
    uint32_t deliveries;
    uint32_t len;
    const uint8_t *payload;
    uint8_t type;
    uint8_t reason;            /* why it was made available again / why DEAD */
    uint8_t dead;              /* pq_wq_acquire_many: 1 when DEAD, for this process to move */
    uint64_t enqueued_ms;
    int64_t deadline_ns;       /* ACQUIRED until then (monotonic) */
} pq_wq_delivery;

typedef struct pq_wq_stats {
    uint64_t available, delayed, in_flight, dead, claimed; /* now, by state */
    uint64_t counters[PQ_WQ_COUNTERS];
    uint64_t capacity, used_bytes, slots;
    uint64_t dedup_used;       /* keys in the dedup table */
} pq_wq_stats;

/* Bytes of a segment; 0 for bad arguments (capacity a power of two,
 * slots a power of two, dedup_slots a power of two or 0). */
uint64_t pq_wq_segment_size(uint64_t capacity, uint32_t slots, uint32_t dedup_slots);

/* max_payload: the largest message (0: a quarter of capacity, which is
 * also the most it may be). */
int pq_wq_create(void *base, size_t size, uint64_t capacity, uint32_t slots,
                 uint32_t dedup_slots, int64_t visibility_ns, uint32_t max_deliveries,
                 int64_t dedup_window_ns, uint64_t max_payload, uint64_t user_flags,
                 const void *user, uint32_t user_len);
int pq_wq_open(pq_wq *q, void *base, size_t size);

/* A 64-bit hash of a deduplication key (FNV-1a, never 0). */
uint64_t pq_wq_key_hash(const void *key, size_t len);

/*
 * Producer, step 1: claim a slot and len bytes for a message (available
 * from delay_ns on). key_hash != 0: a put of a key already put within the
 * dedup window is dropped, whatever became of the first message (done,
 * dead, or still there). 0, with *id and *payload (write len bytes there,
 * then pq_wq_commit); 1: a duplicate (*id = the message it duplicates,
 * nothing to commit); -EAGAIN: no room (slots or bytes) now, *seen for
 * pq_wq_wait_writable; -ENOSPC: a new key and the dedup table holds
 * dedup_slots keys of the window already, *seen as for -EAGAIN (room comes
 * when the oldest key expires); -EINPROGRESS: the key's first put is still
 * being written (its producer may yet die), *seen for pq_wq_wait_readable,
 * then try again; -EMSGSIZE; PQ_ERR_CORRUPT.
 */
int pq_wq_claim(pq_wq *q, uint32_t len, uint8_t type, int64_t delay_ns, uint64_t key_hash,
                uint64_t enqueued_ms, uint64_t *id, uint8_t **payload, uint64_t *seen);

/* Producer, step 2: the message is written; make it available. */
void pq_wq_commit(pq_wq *q, uint64_t id);

/* One message of pq_wq_claim_many: what to claim, and what it got. */
typedef struct pq_wq_put {
    uint32_t len;      /* in */
    uint8_t type;      /* in: the payload's codec */
    uint64_t key_hash; /* in: 0 none (pq_wq_claim) */
    uint64_t id;       /* out: its id, or the one it duplicates */
    uint8_t *payload;  /* out: write len bytes there; NULL for a duplicate */
} pq_wq_put;

/*
 * Producer, many at once (pq_wq_claim.c): claim p[0..n) in order
 * under one hold of the lock, each as pq_wq_claim would (same delay and
 * enqueued_ms). *done: how many were claimed or found duplicates; write
 * and commit those (pq_wq_commit_many). 0 when all n were; else what
 * pq_wq_claim answered for p[*done] (-EAGAIN, -ENOSPC, -EINPROGRESS, with
 * *seen), PQ_ERR_CORRUPT, or -EMSGSIZE / -EINVAL / a lock error (*done 0).
 */
int pq_wq_claim_many(pq_wq *q, pq_wq_put *p, uint32_t n, int64_t delay_ns,
                     uint64_t enqueued_ms, uint32_t *done, uint64_t *seen);

/* Commit the messages p[0..n) claimed (duplicates skipped); one wake-up. */
void pq_wq_commit_many(pq_wq *q, const pq_wq_put *p, uint32_t n);

/*
 * Consumer: the oldest message that is available now (or whose visibility
 * deadline passed). 0: *d is ACQUIRED by this process until now +
 * visibility timeout; 1: *d is DEAD, for this process to move to the
 * dead-letter queue and then pq_wq_dead_done (it has been delivered
 * max_deliveries times, or its mover died, or its move was put off and
 * the time to retry it came); -EAGAIN: none now, *wake_ns
 * is when one may be (a delayed message, a deadline; -1: none known) and
 * *seen is for pq_wq_wait_readable.
 */
int pq_wq_acquire(pq_wq *q, pq_wq_delivery *d, int64_t *wake_ns, uint64_t *seen);

/*
 * Consumer, many at once (pq_wq_acquire.c): up to max messages, in id
 * order, under one hold of the lock, into d[0..*got): each ACQUIRED as by
 * pq_wq_acquire (d[i].dead 0) or DEAD for this process to move (d[i].dead
 * 1). 0 with *got >= 1 (a damaged slot after them stops the scan: the
 * next call answers it); -EAGAIN (*got 0) with *wake_ns and *seen as
 * pq_wq_acquire; PQ_ERR_CORRUPT; -EINVAL (max 0). A consumer that dies
 * holding them: every one is made available again by pq_wq_reap, with its
 * delivery count raised, as for one.
 */
int pq_wq_acquire_many(pq_wq *q, pq_wq_delivery *d, uint32_t max, uint32_t *got,
                       int64_t *wake_ns, uint64_t *seen);

/*
 * The holder's verbs on a delivery (id, and the delivery count it got): 0,
 * or -ESTALE when that delivery is no longer its own (the deadline passed
 * and the message went to another consumer, or was acked).
 *   ack     DONE.
 *   nack    available again from now + delay_ns; 1 instead of 0 when that
 *           was its last delivery: it is DEAD, for the caller to move.
 *   reject  DEAD, for the caller to move.
 *   extend  the deadline becomes now + timeout_ns.
 */
int pq_wq_ack(pq_wq *q, uint64_t id, uint32_t deliveries);
int pq_wq_nack(pq_wq *q, uint64_t id, uint32_t deliveries, int64_t delay_ns);
int pq_wq_reject(pq_wq *q, uint64_t id, uint32_t deliveries);
int pq_wq_extend(pq_wq *q, uint64_t id, uint32_t deliveries, int64_t timeout_ns);

/*
 * ack / nack of the deliveries (ids[i], deliveries[i]), i < n, under one
 * hold of the lock (pq_wq_settle.c): results[i] is what pq_wq_ack /
 * pq_wq_nack would have answered for each (0, 1, -ESTALE). Returns 0, or
 * -EINVAL / a lock error (then nothing was settled).
 */
int pq_wq_ack_many(pq_wq *q, const uint64_t *ids, const uint32_t *deliveries, uint32_t n,
                   int32_t *results);
int pq_wq_nack_many(pq_wq *q, const uint64_t *ids, const uint32_t *deliveries, uint32_t n,
                    int64_t delay_ns, int32_t *results);

/* Does this process still hold delivery (id, deliveries)? 0, or -ESTALE
 * (for a consumer whose copy of the payload took past the deadline: the
 * message may have gone to another, and its bytes been reused). */
int pq_wq_held(pq_wq *q, uint64_t id, uint32_t deliveries);

/* A DEAD message this process moved out: DONE. 0, -ESTALE. */
int pq_wq_dead_done(pq_wq *q, uint64_t id);

/* A DEAD message this process could not move now (the dead-letter queue
 * was full): it stays DEAD without a mover, and an acquire hands it out
 * to be moved again from now + retry_ns on. 0, -ESTALE. */
int pq_wq_dead_park(pq_wq *q, uint64_t id, int64_t retry_ns);

/*
 * Look at the messages held by processes that are gone: a consumer's
 * becomes available again (delivery count kept: it was delivered), a
 * producer's half-written one is dropped (abandoned), a mover's goes back
 * to DEAD without a mover. The count of messages changed.
 */
int pq_wq_reap(pq_wq *q);

/* Wait until something changed since a failed acquire (or claim) saw
 * *seen: 0 worth trying again, -ETIMEDOUT, -EINTR. */
int pq_wq_wait_readable(pq_wq *q, uint64_t seen, int64_t deadline_ns, uint32_t spin_ns);
int pq_wq_wait_writable(pq_wq *q, uint64_t seen, int64_t deadline_ns, uint32_t spin_ns);

/*
 * Copy message id (whatever its state, but for FREE and DONE) without
 * changing it, under the lock: its payload into buf (at most buf_len
 * bytes) and its slot into *d (payload NULL). The payload's length (more
 * than buf_len: call again with room), -ENOENT when there is no such
 * message now.
 */
int pq_wq_copy_message(pq_wq *q, uint64_t id, void *buf, uint32_t buf_len, pq_wq_delivery *d,
                       uint32_t *state);

/* The ids of the messages not done: [*head, *tail). 0, or PQ_ERR_CORRUPT
 * when they are more than the slots (a damaged segment: a scan of them
 * would not end). */
int pq_wq_bounds(pq_wq *q, uint64_t *head, uint64_t *tail);

/* Counts by state (a scan under the lock) and the counters. */
int pq_wq_get_stats(pq_wq *q, pq_wq_stats *s);
/* The same without the lock (pyqueue ls / stats while a holder is stopped):
 * never waits; the counts may be mutually inconsistent. */
void pq_wq_peek_stats(pq_wq *q, pq_wq_stats *s);

/*
 * Shut the work queue down (pq_shutdown.h): raise the segment's flag to how
 * (PQ_SHUTDOWN_DRAIN, or with PQ_SHUTDOWN_IMMEDIATE) and wake every parked
 * waiter in every process; the wait functions return 0 from then on
 * (callers re-check pq_shutdown_state). Returns the flag before, or -EINVAL.
 */
int pq_wq_shutdown(pq_wq *q, uint32_t how);

#endif /* PQ_WQ_H */
