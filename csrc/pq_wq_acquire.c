/* pq_wq_acquire.c - a consumer's take from the work queue: one message or
 * many under one hold of the queue's lock, starting at the scan hint. See
 * pq_wq.h. */
#define _GNU_SOURCE
#include "pq_wq.h"
#include "pq_wq_internal.h"

int pq_wq_acquire_many(pq_wq *q, pq_wq_delivery *d, uint32_t max, uint32_t *got,
                       int64_t *wake_ns, uint64_t *seen)
{
    uint64_t me;
    *got = 0;
    if (max == 0 || d == NULL)
        return -EINVAL;
    int rc = pq_wq_lock_as(q, &me);
    if (rc < 0)
        return rc;
    int64_t now = pq_monotonic_ns(); /* under the lock: the deadline it gives is whole */
    pq_wq_ctl *c = q->ctl;
    /* Before the scan (acquire): a commit that the scan misses bumps the
     * word after its state store, so a wait on this value returns. */
    uint64_t seq = atomic_load_explicit(&c->readable_seq, memory_order_acquire);
    uint64_t h = atomic_load_explicit(&c->head, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&c->tail, memory_order_relaxed);
    if (t < h || t - h > q->nslots) {
        pq_wq_unlock(q);
        return PQ_ERR_CORRUPT;
    }
    /* Start at the hint while nothing below it can have come due. */
    uint64_t sc = atomic_load_explicit(&c->scan, memory_order_relaxed);
    int64_t sw = atomic_load_explicit(&c->scan_wake, memory_order_relaxed);
    uint64_t start = h;
    int64_t wake = INT64_MAX; /* the earliest a message passed may come due */
    if (sc > h && sc <= t && now < sw) {
        start = sc;
        wake = sw;
    }
    uint64_t claimed = UINT64_MAX; /* the first one being written */
    uint32_t n = 0;
    int damaged = 0;
    uint64_t id;
    /* Bounded: at most t - h <= nslots messages. */
    for (id = start; id < t && n < max; id++) {
        pq_wq_slot *s = pq_wq_slot_of(q, id);
        if (atomic_load_explicit(&s->id, memory_order_relaxed) != id)
            continue;
        /* acquire: a committed payload (pairs with pq_wq_publish's release). */
        uint32_t st = atomic_load_explicit(&s->state, memory_order_acquire);
        int64_t at = atomic_load_explicit(&s->at_ns, memory_order_relaxed);
        if (st == PQ_WQ_CLAIMED) {
            if (claimed == UINT64_MAX)
                claimed = id;
            continue;
        }
        if (st == PQ_WQ_DEAD) {
            if (atomic_load_explicit(&s->owner, memory_order_relaxed) != 0)
                continue; /* being moved */
            if (at > now) { /* its move was put off (pq_wq_dead_park) until at */
                if (at < wake)
                    wake = at;
                continue;
            }
            if (!pq_wq_slot_sane(q, s)) {
                damaged = 1;
                break;
            }
            atomic_store_explicit(&s->owner, me, memory_order_relaxed); /* its mover died */
            pq_wq_fill(q, s, id, &d[n]);
            d[n++].dead = 1;
            continue;
        }
        if (st != PQ_WQ_AVAILABLE && st != PQ_WQ_ACQUIRED)
            continue; /* done */
        if (at > now) { /* delayed, or held within its deadline */
            if (at < wake)
                wake = at;
            continue;
        }
        if (!pq_wq_slot_sane(q, s)) {
            damaged = 1;
            break;
        }
        uint32_t k = atomic_load_explicit(&s->deliveries, memory_order_relaxed);
        atomic_store_explicit(&s->owner, me, memory_order_relaxed);
        if (st == PQ_WQ_ACQUIRED)
            s->reason = PQ_WQ_REASON_TIMEOUT; /* not acked in time (its holder's ack fails) */
        if (q->max_deliveries != 0 && k >= q->max_deliveries) {
            atomic_store_explicit(&s->state, PQ_WQ_DEAD, memory_order_relaxed);
            pq_wq_fill(q, s, id, &d[n]);
            d[n++].dead = 1;
            continue;
        }
        if (st == PQ_WQ_ACQUIRED)
            pq_wq_count(q, PQ_WQ_REDELIVERED);
        int64_t deadline = pq_wq_after(now, q->visibility_ns);
        atomic_store_explicit(&s->deliveries, k + 1, memory_order_relaxed);
        atomic_store_explicit(&s->at_ns, deadline, memory_order_relaxed);
        atomic_store_explicit(&s->state, PQ_WQ_ACQUIRED, memory_order_relaxed);
        pq_wq_fill(q, s, id, &d[n]);
        d[n++].dead = 0;
        if (deadline < wake)
            wake = deadline;
    }
    if (!damaged || n > 0) {
        /* The hint: past what was passed and taken (id: the first not
         * looked at, or the damaged one, which the next call meets again),
         * but never past a message being written (its commit lowers
         * nothing). */
        atomic_store_explicit(&c->scan, claimed < id ? claimed : id, memory_order_relaxed);
        atomic_store_explicit(&c->scan_wake, wake, memory_order_relaxed);
    }
    pq_wq_unlock(q);
    *got = n;
    if (n > 0)
        return 0; /* damage past them is answered by the next call */
    if (damaged)
        return PQ_ERR_CORRUPT;
    if (wake_ns)
        *wake_ns = wake == INT64_MAX ? -1 : wake;
    if (seen)
        *seen = seq;
    return -EAGAIN;
}

int pq_wq_acquire(pq_wq *q, pq_wq_delivery *d, int64_t *wake_ns, uint64_t *seen)
{
    uint32_t got;
    int rc = pq_wq_acquire_many(q, d, 1, &got, wake_ns, seen);
    return rc < 0 ? rc : d->dead;
}
