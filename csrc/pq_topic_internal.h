/*
 * pq_topic_internal.h - what pq_topic.c shares with the other topic files
 * (pq_topic_pass.c, pq_topic_refs.c); not part of the API.
 */
#ifndef PQ_TOPIC_INTERNAL_H
#define PQ_TOPIC_INTERNAL_H

#include "pq_fault.h"
#include "pq_record.h"
#include "pq_topic.h"

/* What a lock holder announces before it changes the ring, for the next
 * holder when it dies halfway (pq_topic_lock). Kept in the segment
 * header's reserved params would be a layout change; they live right
 * after the control block instead (it has room; a segment made before a
 * word was added has it zero: nothing pending). All change under the
 * claim lock only. */
typedef struct pq_topic_pending {
    _Atomic uint64_t claim_tail;   /* a claim in progress (pq_claim_lock.h) */
    _Atomic uint64_t claim_msgs;
    _Atomic uint64_t move_head;    /* head being moved there (0: no move) ... */
    _Atomic uint64_t move_msgs;    /* ... and head_msgs to this */
    pq_reclaim reclaim;            /* out-of-band records behind head (pq_refs.h) */
} pq_topic_pending;

static inline pq_record_header *pq_topic_header_at(const pq_topic *t, uint64_t pos)
{
    return (pq_record_header *)(t->data + (pos & t->mask));
}
static inline pq_topic_pending *pq_topic_pending_words(const pq_topic *t)
{
    /* Right after the control block, still below the data area. */
    return (pq_topic_pending *)((uint8_t *)t->ctl + pq_align_up(sizeof(pq_topic_ctl), 64));
}
_Static_assert(PQ_TOPIC_CTL_OFFSET + ((sizeof(pq_topic_ctl) + 63) & ~(size_t)63) +
                       sizeof(pq_topic_pending) <= PQ_TOPIC_DATA_OFFSET,
               "no room for the pending-claim words");

/* The claim lock (robust; a dead holder's claim is repaired): 0 or the
 * lock's error. */
int pq_topic_lock(pq_topic *t);
void pq_topic_unlock(pq_topic *t);

/* Under the lock: the ring's tail, head and the messages before head.
 * relaxed: they only change under the lock, which the caller holds.
 * PQ_ERR_CORRUPT when they cannot be a ring's (tail off a record
 * boundary, or more than the ring apart); the caller unlocks. */
static inline int pq_topic_load_ends(const pq_topic *t, uint64_t *tl, uint64_t *h, uint64_t *hm)
{
    *tl = atomic_load_explicit(&t->ctl->tail, memory_order_relaxed);
    *h = atomic_load_explicit(&t->ctl->head, memory_order_relaxed);
    *hm = atomic_load_explicit(&t->ctl->head_msgs, memory_order_relaxed);
    if ((*tl & (PQ_RECORD_ALIGN - 1)) != 0 || *tl - *h > t->capacity)
        return PQ_ERR_CORRUPT;
    return 0;
}

/*
 * Under the lock: move head to h and head_msgs (the messages before it)
 * to hm. The pair is announced first, so that a holder that dies between
 * the two stores leaves it for the next holder to complete
 * (pq_topic_lock), instead of retained/lost counts that are off for good.
 * Release on each store: a process can die between any two of them, so
 * their program order is what the next holder finds (it reads them after
 * the robust lock's hand-off); and a lossy reader validating a copy
 * (acquire fence, then head) sees head_msgs no older than head.
 */
static inline void pq_topic_move_head(const pq_topic *t, uint64_t h, uint64_t hm)
{
    pq_topic_pending *pd = pq_topic_pending_words(t);
    atomic_store_explicit(&pd->move_msgs, hm, memory_order_relaxed);
    atomic_store_explicit(&pd->move_head, h, memory_order_release);
    PQ_FAULT_POINT(PQ_FAULT_HEAD_MOVE_ANNOUNCED); /* a fault build can stop here (tests) */
    atomic_store_explicit(&t->ctl->head_msgs, hm, memory_order_release);
    PQ_FAULT_POINT(PQ_FAULT_MID_HEAD_MOVE); /* a fault build can stop here (tests) */
    atomic_store_explicit(&t->ctl->head, h, memory_order_release);
    atomic_store_explicit(&pd->move_head, 0, memory_order_release);
}

/*
 * Under the lock, first in a claim or trim: a pending reclaim (pq_refs.h)
 * that this caller did not end is reported to it: its references appended
 * to refs, refs->reclaim set, -ENOBUFS (the caller unlinks them - again:
 * an unlink of a name gone is harmless - and calls again with
 * refs->reclaim as it is). The records are intact: no claim overwrites
 * them while the reclaim is pending. -EINVAL when refs has no room for
 * them. 0: nothing pending. A range the ring cannot hold, or records that
 * are not the ones reported (damage), are dropped: PQ_ERR_CORRUPT, once.
 */
int pq_topic_reclaim_pending(const pq_topic *t, uint64_t tl, uint64_t h, pq_topic_refs *refs);

/*
 * Under the lock, with the references of the records from h0 to h just
 * appended to refs: announce them as a pending
 * reclaim (its end h goes to refs->reclaim) and move head to h / hm. The
 * caller unlocks and returns them.
 */
void pq_topic_reclaim_start(const pq_topic *t, uint64_t h0, uint64_t h, uint64_t hm,
                            pq_topic_refs *refs);

/*
 * Under the lock: walk *h (and *hm, the messages before it) over whole
 * records until *h is at or past target, checking each header against
 * the ring (tl: the tail). Each committed record whose type has
 * PQ_TOPIC_TYPE_OOB is counted in *n_oob (if not NULL), its end kept in
 * *last_oob_end (if not NULL), and its payload copied into refs (if not
 * NULL). stop_at_claimed: stop (0) at a record still CLAIMED, whose
 * publisher may yet commit it out of band. 0; -ENOBUFS refs is full: *h
 * stops before the record that did not fit (nothing skipped unreported);
 * PQ_ERR_CORRUPT.
 */
int pq_topic_pass(const pq_topic *t, uint64_t *h, uint64_t *hm, uint64_t target, uint64_t tl,
                  pq_topic_refs *refs, uint32_t *n_oob, uint64_t *last_oob_end,
                  int stop_at_claimed);

#endif /* PQ_TOPIC_INTERNAL_H */
