/* pq_wq_claim.c - a producer's side of the work queue: claim room for one
 * message or many under one hold of the queue's lock, then commit them
 * (a CAS each, no lock). See pq_wq.h.
 *
 * Memory orders: the claim's stores run under the lock and are read under
 * it (relaxed: the lock orders them); the one word read without the lock
 * is a slot's state, which the commit moves CLAIMED -> AVAILABLE with
 * release (pq_wq_publish) so that a consumer that sees AVAILABLE
 * (acquire) sees the payload written before it. */
#define _GNU_SOURCE
#include "pq_wq.h"
#include "pq_wq_internal.h"

/* Under the lock: one claim (pq_wq_claim's answers). */
static int pq_wq_claim_one(pq_wq *q, uint64_t me, int64_t now, uint32_t len, uint8_t type,
                           int64_t delay_ns, uint64_t key_hash, uint64_t enqueued_ms,
                           uint64_t *id, uint8_t **payload, uint64_t *seen)
{
    pq_wq_ctl *c = q->ctl;
    uint64_t h = atomic_load_explicit(&c->head, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&c->tail, memory_order_relaxed);
    uint64_t hp = atomic_load_explicit(&c->head_pos, memory_order_relaxed);
    uint64_t tp = atomic_load_explicit(&c->tail_pos, memory_order_relaxed);
    if (t < h || t - h > q->nslots || tp < hp || tp - hp > q->capacity ||
        (tp & (PQ_WQ_ALIGN - 1)) != 0)
        return PQ_ERR_CORRUPT;
    int keyed = key_hash != 0 && q->dedup.cap != 0;
    if (keyed) {
        int rc = pq_wq_dedup_expire(&q->dedup, now);
        if (rc < 0)
            return rc;
        /* A key put within the window is a duplicate whatever became of
         * its message since (done, dead, or still there). */
        const pq_wq_dedup *de = pq_wq_dedup_find(&q->dedup, key_hash, now);
        if (de != NULL) {
            uint64_t first = atomic_load_explicit(&de->id, memory_order_relaxed);
            pq_wq_slot *fs = pq_wq_slot_of(q, first);
            if (first >= h && first < t &&
                atomic_load_explicit(&fs->id, memory_order_relaxed) == first &&
                atomic_load_explicit(&fs->state, memory_order_acquire) == PQ_WQ_CLAIMED) {
                /* Its first put is still being written, and its producer
                 * may yet die (then the key is given back): wait for it,
                 * then look again. */
                if (seen)
                    *seen = atomic_load_explicit(&c->readable_seq, memory_order_acquire);
                return -EINPROGRESS;
            }
            *id = first;
            pq_wq_count(q, PQ_WQ_DEDUPED);
            return 1;
        }
    }
    uint64_t size = pq_align_up(len ? len : 1, PQ_WQ_ALIGN);
    uint64_t pos = tp;
    if ((pos & q->mask) + size > q->capacity)
        pos += q->capacity - (pos & q->mask); /* never wraps: to the next lap */
    if (t - h == q->nslots || pos + size - hp > q->capacity) {
        if (seen)
            *seen = atomic_load_explicit(&c->writable_seq, memory_order_acquire);
        return -EAGAIN;
    }
    if (keyed && !pq_wq_dedup_room(&q->dedup, NULL)) {
        /* Every entry is a key put within the window: dropping one would
         * let its repeat through, so the put waits for the oldest to
         * expire (a room the window makes, not a consumer). */
        pq_wq_count(q, PQ_WQ_DEDUP_FULL);
        if (seen)
            *seen = atomic_load_explicit(&c->writable_seq, memory_order_acquire);
        return -ENOSPC;
    }
    pq_wq_slot *s = pq_wq_slot_of(q, t);
    atomic_store_explicit(&s->id, t, memory_order_relaxed);
    atomic_store_explicit(&s->deliveries, 0, memory_order_relaxed);
    atomic_store_explicit(&s->owner, me, memory_order_relaxed);
    atomic_store_explicit(&s->at_ns, pq_wq_after(now, delay_ns), memory_order_relaxed);
    s->pos = pos;
    s->len = len;
    s->type = type;
    s->reason = PQ_WQ_REASON_NONE;
    s->enqueued_ms = enqueued_ms;
    s->dedup_entry = keyed ? pq_wq_dedup_next(&q->dedup) + 1 : 0;
    atomic_store_explicit(&s->state, PQ_WQ_CLAIMED, memory_order_relaxed);
    /* tail_pos before tail: a holder that dies between them leaks the
     * bytes until the head passes, never hands them out twice. */
    atomic_store_explicit(&c->tail_pos, pos + size, memory_order_relaxed);
    atomic_store_explicit(&c->tail, t + 1, memory_order_relaxed);
    if (keyed) {
        /* After the tail: the key names a message that exists. A claim
         * abandoned by a dead producer gives it back (pq_wq_reap), so its
         * retry is not dropped. */
        pq_wq_dedup_add(&q->dedup, key_hash, t, now);
    }
    pq_wq_count(q, PQ_WQ_ENQUEUED);
        *id = t;
    *payload = q->data + (pos & q->mask);
    return 0;
    *id = t;
    *payload = q->data + (pos & q->mask);
    return 0;
}

int pq_wq_claim(pq_wq *q, uint32_t len, uint8_t type, int64_t delay_ns, uint64_t key_hash,
                uint64_t enqueued_ms, uint64_t *id, uint8_t **payload, uint64_t *seen)
{
    uint64_t me;
    if (len > q->max_payload)
        return -EMSGSIZE;
    if (delay_ns < 0 || id == NULL || payload == NULL)
        return -EINVAL;
    int rc = pq_wq_lock_as(q, &me);
    if (rc < 0)
        return rc;
    rc = pq_wq_claim_one(q, me, pq_monotonic_ns(), len, type, delay_ns, key_hash, enqueued_ms,
                         id, payload, seen);
    pq_wq_unlock(q);
    return rc;
}

int pq_wq_claim_many(pq_wq *q, pq_wq_put *p, uint32_t n, int64_t delay_ns,
                     uint64_t enqueued_ms, uint32_t *done, uint64_t *seen)
{
    uint64_t me;
    *done = 0;
    if (delay_ns < 0 || (n != 0 && p == NULL))
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++)
        if (p[i].len > q->max_payload)
            return -EMSGSIZE;
    int rc = pq_wq_lock_as(q, &me);
    if (rc < 0)
        return rc;
    int64_t now = pq_monotonic_ns();
    uint32_t i;
    rc = 0;
    for (i = 0; i < n; i++) { /* bounded by n */
        rc = pq_wq_claim_one(q, me, now, p[i].len, p[i].type, delay_ns, p[i].key_hash,
                             enqueued_ms, &p[i].id, &p[i].payload, seen);
        if (rc < 0)
            break;
        if (rc == 1) /* a duplicate: nothing to write */
            p[i].payload = NULL;
        rc = 0;
    }
    pq_wq_unlock(q);
    *done = i;
    return rc;
}

/* Claimed -> available (no lock). release: the payload written before is
 * visible to a consumer that sees AVAILABLE (acquire, in pq_wq_acquire_many).
 * A CAS: a reaper that took the claim for a dead producer's wins, and then
 * this is a no-op. No scan hint to lower: a get never passes a CLAIMED
 * message. */
static inline void pq_wq_publish(pq_wq *q, uint64_t id)
{
    pq_wq_slot *s = pq_wq_slot_of(q, id);
    uint32_t expect = PQ_WQ_CLAIMED;
    if (atomic_load_explicit(&s->id, memory_order_relaxed) == id)
        atomic_compare_exchange_strong_explicit(&s->state, &expect, PQ_WQ_AVAILABLE,
                                                memory_order_release, memory_order_relaxed);
}

void pq_wq_commit(pq_wq *q, uint64_t id)
{
    pq_wq_publish(q, id);
    /* One waiter for one message: each parked consumer also wakes at the
     * end of its slice, so none is left behind for long. */
    pq_wq_announce(&q->ctl->readable_seq, &q->ctl->readable, 1);
}

void pq_wq_commit_many(pq_wq *q, const pq_wq_put *p, uint32_t n)
{
    int woken = 0;
    for (uint32_t i = 0; i < n; i++) { /* bounded by n */
        if (p[i].payload == NULL)
            continue; /* a duplicate */
        pq_wq_publish(q, p[i].id);
        woken++;
    }
    if (woken) /* one wake-up for the lot: as many waiters as messages */
        pq_wq_announce(&q->ctl->readable_seq, &q->ctl->readable, woken);
}
