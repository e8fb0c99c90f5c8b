/*
 * pq_topic_internal.h - what pq_topic.c shares with the other topic files
 * (pq_topic_pass.c, pq_topic_refs.c); not part of the API.
 */
#ifndef PQ_TOPIC_INTERNAL_H
#define PQ_TOPIC_INTERNAL_H

#include "pq_record.h"
#include "pq_topic.h"

/* Where a claim in progress is announced, for a lock holder that dies
 * inside it (see pq_topic_lock). Kept in the segment header's reserved
 * params would be a layout change; they live at the end of the claim
 * lock's line instead (the control block has room). */
typedef struct pq_topic_pending {
    _Atomic uint64_t claim_tail;
    _Atomic uint64_t claim_msgs;
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
