/* pq_claim_lock.c - the robust claim lock of the rings. See pq_claim_lock.h. */
#define _GNU_SOURCE
#include "pq_claim_lock.h"

int pq_claim_lock_init(pthread_mutex_t *m)
{
    return pq_lock_init(m);
}

static void pq_claim_recover(pthread_mutex_t *m, const pq_claim_words *w);

int pq_claim_lock(pthread_mutex_t *m, const pq_claim_words *w)
{
    return pq_claim_lock_ex(m, w, NULL);
}

int pq_claim_lock_ex(pthread_mutex_t *m, const pq_claim_words *w, int *owner_died)
{
    int died;
    if (owner_died)
        *owner_died = 0;
    /*
     * No trylock spin before waiting: measured on 16 cores, spinning on
     * trylock (a locked instruction per try) made 4x4 and 8x8 producers
     * 2-3x slower than letting glibc park them. pq_lock_take tries once
     * and then waits with a deadline (or, for the bindings, returns
     * PQ_ERR_LOCK_BUSY so that they wait without the GIL).
     */
    int rc = pq_lock_take(m, &died);
    if (rc == 0 && died) {
        pq_claim_recover(m, w);
        if (owner_died)
            *owner_died = 1;
    }
    return rc;
}

int pq_claim_lock_until(pthread_mutex_t *m, const pq_claim_words *w, int64_t deadline_ns)
{
    int died;
    int rc = pq_lock_acquire(m, deadline_ns, &died);
    if (rc == 0 && died)
        pq_claim_recover(m, w);
    return rc;
}

static void pq_claim_recover(pthread_mutex_t *m, const pq_claim_words *w)
{
    /*
     * The previous holder died inside its claim. The tail store
     * (release) publishes the claim: headers beyond tail are simply
     * rewritten by the next claim, and a published CLAIMED record is
     * repaired by readers. tail_msgs is bumped just before tail, so a
     * holder that died between the two left a count for records that
     * do not exist: undo it (claim_tail says it was in a claim).
     */
    uint64_t pending = atomic_load_explicit(w->claim_tail, memory_order_acquire);
    if (pending != 0) {
        if (atomic_load_explicit(w->tail, memory_order_relaxed) != pending)
            atomic_store_explicit(w->tail_msgs,
                                  atomic_load_explicit(w->claim_msgs, memory_order_relaxed),
                                  memory_order_relaxed);
        atomic_store_explicit(w->claim_tail, 0, memory_order_relaxed);
    }
    /* relaxed: read under this lock by the next trim (and as a hint by
     * takes); a mark too many costs one madvise of a hole. */
    if (w->dirty_levels != NULL)
        atomic_fetch_or_explicit(w->dirty_levels, w->all_levels, memory_order_relaxed);
    pthread_mutex_consistent(m);
}
