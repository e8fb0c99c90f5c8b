/*
 * pq_claim_lock.h - the lock producers hold while they claim room in a ring
 * (pq_ring, pq_topic), and the recovery of a claim whose holder died
 * inside it.
 *
 * Robust: if a holder dies, the kernel hands the lock to the next one with
 * EOWNERDEAD instead of deadlocking (faster-fifo's failure mode).
 * Process-shared: it lives in shared memory. The claim announces itself
 * (claim_msgs, then claim_tail) before it counts its messages and
 * publishes its tail, so the next holder can undo a count bumped for
 * records that were never published.
 */
#ifndef PQ_CLAIM_LOCK_H
#define PQ_CLAIM_LOCK_H

#include <pthread.h>

#include "pq_common.h"
#include "pq_lock.h"

/* The words of a ring that a claim changes, for the recovery. */
typedef struct pq_claim_words {
    _Atomic uint64_t *tail;       /* end of the published records */
    _Atomic uint64_t *tail_msgs;  /* messages claimed, ever */
    _Atomic uint64_t *claim_tail; /* the tail a claim in progress will publish; 0: none */
    _Atomic uint64_t *claim_msgs; /* tail_msgs before that claim */
    /* A ring's levels that may have pages (pq_ring_ctl.dirty_levels), and
     * all of its levels >= 1: a holder that died may have been a trim that
     * had cleared a level's mark and not yet emptied the region
     * (pq_ring_trim), so the recovery marks them all. NULL, 0 elsewhere. */
    _Atomic uint64_t *dirty_levels;
    uint64_t all_levels;
} pq_claim_words;

/* Initialize a robust process-shared mutex in zeroed shared memory. */
int pq_claim_lock_init(pthread_mutex_t *m);

/*
 * Take the lock. If its holder died, repair what a half-made claim left
 * (see above) and mark the lock consistent. 0, or -errno: the codes of
 * pq_lock_take (pq_lock.h: PQ_ERR_LOCK_BUSY for the bindings, -ETIMEDOUT,
 * -ENOTRECOVERABLE when the lock is broken for good, PQ_ERR_LOCK_DAMAGED).
 */
int pq_claim_lock(pthread_mutex_t *m, const pq_claim_words *w);

/* The same, and *owner_died = 1 when the previous holder had died (so the
 * caller can repair its own words too), else 0. */
int pq_claim_lock_ex(pthread_mutex_t *m, const pq_claim_words *w, int *owner_died);

/* Take the lock before deadline_ns (CLOCK_MONOTONIC; 0: one try, never a
 * wait), whatever the lock sites' setting: 0 (a dead holder's claim
 * repaired as above), -EBUSY / -ETIMEDOUT, or the errors of
 * pq_lock_acquire. */
int pq_claim_lock_until(pthread_mutex_t *m, const pq_claim_words *w, int64_t deadline_ns);

#endif /* PQ_CLAIM_LOCK_H */
