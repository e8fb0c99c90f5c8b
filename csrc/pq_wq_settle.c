/* pq_wq_settle.c - a holder's ack and nack of deliveries: one or many
 * under one hold of the queue's lock. See pq_wq.h.
 *
 * Memory orders: every slot word is written here under the lock, and
 * every reader of these words (acquire, reap, the stats) reads them under
 * it too, so relaxed stores suffice: the lock's release/acquire orders
 * them. (The lock-free peek of the stats may see them in any order; it
 * says so.) The sequence words of the events are bumped with release by
 * pq_wq_announce, after the unlock. */
#define _GNU_SOURCE
#include "pq_wq.h"
#include "pq_wq_internal.h"

int pq_wq_ack_many(pq_wq *q, const uint64_t *ids, const uint32_t *deliveries, uint32_t n,
                   int32_t *results)
{
    uint64_t me;
    if (n != 0 && (ids == NULL || deliveries == NULL || results == NULL))
        return -EINVAL;
    int rc = pq_wq_lock_as(q, &me);
    if (rc < 0)
        return rc;
    int done = 0;
    for (uint32_t i = 0; i < n; i++) { /* bounded by n */
        pq_wq_slot *s = pq_wq_slot_held(q, me, ids[i], deliveries[i], PQ_WQ_ACQUIRED);
        if (s == NULL) {
            results[i] = -ESTALE;
            continue;
        }
        atomic_store_explicit(&s->state, PQ_WQ_DONE, memory_order_relaxed);
        pq_wq_count(q, PQ_WQ_ACKED);
        results[i] = 0;
        done = 1;
    }
    /* Once for the lot: the head passes every DONE message it reaches. */
    int moved = done ? pq_wq_advance_head(q) : 0;
    pq_wq_unlock(q);
    if (moved)
        pq_wq_announce(&q->ctl->writable_seq, &q->ctl->writable, INT32_MAX);
    return 0;
}

int pq_wq_nack_many(pq_wq *q, const uint64_t *ids, const uint32_t *deliveries, uint32_t n,
                    int64_t delay_ns, int32_t *results)
{
    uint64_t me;
    if (delay_ns < 0 || (n != 0 && (ids == NULL || deliveries == NULL || results == NULL)))
        return -EINVAL;
    int rc = pq_wq_lock_as(q, &me);
    if (rc < 0)
        return rc;
    int64_t at = pq_wq_after(pq_monotonic_ns(), delay_ns);
    int readable = 0;
    for (uint32_t i = 0; i < n; i++) { /* bounded by n */
        pq_wq_slot *s = pq_wq_slot_held(q, me, ids[i], deliveries[i], PQ_WQ_ACQUIRED);
        if (s == NULL) {
            results[i] = -ESTALE;
            continue;
        }
        s->reason = PQ_WQ_REASON_NACK;
        if (q->max_deliveries != 0 && deliveries[i] >= q->max_deliveries) {
            /* Its last delivery: DEAD, still this process's, to move. */
            atomic_store_explicit(&s->state, PQ_WQ_DEAD, memory_order_relaxed);
            results[i] = 1;
            continue;
        }
        atomic_store_explicit(&s->at_ns, at, memory_order_relaxed);
        atomic_store_explicit(&s->state, PQ_WQ_AVAILABLE, memory_order_relaxed);
        pq_wq_rescan(q, ids[i]);
        pq_wq_count(q, PQ_WQ_REDELIVERED);
        results[i] = 0;
        readable++;
    }
    pq_wq_unlock(q);
    if (readable)
        pq_wq_announce(&q->ctl->readable_seq, &q->ctl->readable, readable);
    return 0;
}

int pq_wq_ack(pq_wq *q, uint64_t id, uint32_t deliveries)
{
    int32_t r;
    int rc = pq_wq_ack_many(q, &id, &deliveries, 1, &r);
    return rc < 0 ? rc : r;
}

int pq_wq_nack(pq_wq *q, uint64_t id, uint32_t deliveries, int64_t delay_ns)
{
    int32_t r;
    int rc = pq_wq_nack_many(q, &id, &deliveries, 1, delay_ns, &r);
    return rc < 0 ? rc : r;
}
