/*
 * pq_shutdown.h - the shutdown flag every segment carries in its header
 * (queue.Queue.shutdown of Python 3.13, across processes).
 *
 * Shutting down raises the flag (never lowered: a segment once shut down
 * stays so, for handles opened later too) and then wakes every waiter of
 * the kind's events with pq_event_wake_all. Every wait condition of every
 * kind also counts "shut down" as ready, so a waiter that registers after
 * the wake does not park: either its re-check after pq_event_prepare sees
 * the flag, or the wake's bump of seq comes after its prepare and the park
 * returns at once (pq_wait.h). The fast paths read the flag at most once,
 * relaxed (pq_shutdown_state).
 */
#ifndef PQ_SHUTDOWN_H
#define PQ_SHUTDOWN_H

#include "pq_common.h"
#include "pq_segment.h"

/* Values of pq_segment_header.shutdown (a bit set; IMMEDIATE implies
 * DRAIN). */
#define PQ_SHUTDOWN_DRAIN 1u     /* puts refused; gets drain, then refused */
#define PQ_SHUTDOWN_IMMEDIATE 2u /* gets refused too, at once */
#define PQ_SHUTDOWN_MASK 3u

/*
 * The flag as this thread sees it now. Relaxed: it orders no data (what a
 * get returns is published by the ring's own acquire/release pairs); a
 * stale 0 makes the call behave as it did just before the shutdown. The
 * waiting side uses pq_shutdown_seen instead.
 */
static inline uint32_t pq_shutdown_state(const void *base)
{
    const pq_segment_header *h = base;
    return atomic_load_explicit(&((pq_segment_header *)h)->shutdown, memory_order_relaxed) &
           PQ_SHUTDOWN_MASK;
}

/*
 * The flag for a wait condition, read after pq_event_prepare: acquire, so
 * that a waiter that read the seq bumped by pq_shutdown_set's wake (release)
 * sees the flag raised before it.
 */
static inline uint32_t pq_shutdown_seen(const void *base)
{
    const pq_segment_header *h = base;
    return atomic_load_explicit(&((pq_segment_header *)h)->shutdown, memory_order_acquire) &
           PQ_SHUTDOWN_MASK;
}

/*
 * Raise the flag to `how` (PQ_SHUTDOWN_DRAIN, or DRAIN|IMMEDIATE) and
 * return what it was before (0: this call shut the segment down). The
 * caller then wakes the kind's events (pq_event_wake_all). -EINVAL for a
 * `how` outside PQ_SHUTDOWN_MASK or without DRAIN.
 */
int pq_shutdown_set(void *base, uint32_t how);

#endif /* PQ_SHUTDOWN_H */
