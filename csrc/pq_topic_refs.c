/* pq_topic_refs.c - out-of-band records of a topic: release the ones
 * every subscriber passed (pq_topic_trim), list the live ones
 * (pq_topic_scan_refs). See pq_topic.h and docs/design.md ("Topic: large
 * messages"). */
#define _GNU_SOURCE
#include "pq_topic_internal.h"

int pq_topic_reclaim_pending(const pq_topic *t, uint64_t tl, uint64_t h, pq_topic_refs *refs)
{
    pq_reclaim *r = &pq_topic_pending_words(t)->reclaim;
    uint64_t from, to;
    if (!pq_reclaim_take(r, refs, &from, &to))
        return 0;
    int rc = pq_reclaim_check(r, refs, from, to, h, tl, t->capacity);
    if (rc <= 0)
        return rc;
    uint64_t p = from, m = 0;
    const uint32_t before = refs->count;
    rc = pq_topic_pass(t, &p, &m, to, tl, refs, NULL, NULL, 0);
    return pq_reclaim_reported(r, refs, rc, p, to, before);
}

void pq_topic_reclaim_start(const pq_topic *t, uint64_t h0, uint64_t h, uint64_t hm,
                            pq_topic_refs *refs)
{
    /* Announced before head moves past the records: the next holder after
     * a death here finds the reclaim, or finds head not moved. */
    pq_reclaim_start(&pq_topic_pending_words(t)->reclaim, h0, h, refs);
    pq_topic_move_head(t, h, hm);
}

int pq_topic_trim(pq_topic *t, uint64_t limit, pq_topic_refs *refs)
{
    pq_topic_ctl *c = t->ctl;
    if (refs == NULL || refs->count > refs->max)
        return -EINVAL;
    const uint32_t before = refs->count;
    int rc = pq_topic_lock(t);
    if (rc < 0)
        return rc;
    uint64_t tl, h, hm;
    rc = pq_topic_load_ends(t, &tl, &h, &hm);
    if (rc == 0)
        rc = pq_topic_reclaim_pending(t, tl, h, refs);
    if (rc < 0) {
        pq_topic_unlock(t);
        return rc == -ENOBUFS ? (int)(refs->count - before) : rc;
    }
    uint64_t end = tl;
    if (limit != UINT64_MAX && (int64_t)(limit - end) < 0)
        end = limit;
    /* Never past a held slot's cursor. acquire: pairs with the
     * subscriber's release store of its cursor - it mapped the segments
     * of the records before it (the binding maps before it advances). A
     * slot taken after this scan starts at head or tail (under the lock),
     * never below. */
    for (int i = 0; i < PQ_TOPIC_SUBS; i++) {
        pq_topic_slot *sl = &c->slots[i];
        if (atomic_load_explicit(&sl->owner, memory_order_relaxed) == 0)
            continue;
        uint64_t cur = atomic_load_explicit(&sl->cursor, memory_order_acquire);
        /* A lapped lossy subscriber (its cursor behind head) holds nothing
         * back: the records it would read are overwritten, its advance
         * fails and it moves to head, past every record released here.
         * Counting it would stop the trim for every other subscriber
         * until it reads again - for ever, if it was SIGKILLed. */
        if (t->mode == PQ_TOPIC_LOSSY && (int64_t)(cur - h) < 0)
            continue;
        if ((int64_t)(cur - end) < 0)
            end = cur;
    }
    if ((int64_t)(end - h) <= 0) {
        pq_topic_unlock(t);
        return 0;
    }
    /* A cursor is on a record boundary (or a lapped lossy one is behind
     * head, handled above): the walk stops on end exactly - or earlier, at
     * a record still CLAIMED (with no subscriber, end is tail): its
     * publisher may yet commit it out of band, and head must not pass it
     * unreported. First find the last out-of-band record, then move head
     * to its end reporting. */
    uint64_t last = h, p = h, pm = hm;
    rc = pq_topic_pass(t, &p, &pm, end, tl, NULL, NULL, &last, 1);
    if (rc == 0 && (int64_t)(p - end) > 0) /* end inside a record: never released */
        rc = end == limit ? -EINVAL : PQ_ERR_CORRUPT;
    if (rc < 0 || last == h) {
        pq_topic_unlock(t);
        return rc < 0 ? rc : 0;
    }
    const uint64_t h0 = h;
    rc = pq_topic_pass(t, &h, &hm, last, tl, refs, NULL, NULL, 1);
    if (rc < 0 && rc != -ENOBUFS) {
        pq_topic_unlock(t);
        return rc;
    }
    if (refs->count == before) { /* refs full on entry: nothing reported */
        pq_topic_unlock(t);
        return 0;
    }
    /* Head moves past them as a pending reclaim, as a claim's (see
     * pq_topic_claim_refs): nothing is overwritten here; a lossy reader
     * validating a copy sees either head; no held slot is below the new
     * head, so none of them is invalidated. */
    pq_topic_reclaim_start(t, h0, h, hm, refs);
    pq_topic_unlock(t);
    return (int)(refs->count - before);
}

int pq_topic_scan_refs(pq_topic *t, uint64_t *from, pq_topic_refs *refs)
{
    if (refs == NULL || from == NULL || refs->count > refs->max)
        return -EINVAL;
    int rc = pq_topic_lock(t);
    if (rc < 0)
        return rc;
    uint64_t tl, h, hm;
    rc = pq_topic_load_ends(t, &tl, &h, &hm);
    if (rc < 0) {
        pq_topic_unlock(t);
        return rc;
    }
    /* From *from if it is still a record of the ring (the scan went on
     * from there in an earlier call), else from head. A *from that is
     * not a record boundary is caught by the walk's tag check. */
    uint64_t p = h;
    if ((int64_t)(*from - h) > 0 && (int64_t)(tl - *from) >= 0)
        p = *from;
    rc = pq_topic_pass(t, &p, &hm, tl, tl, refs, NULL, NULL, 0);
    pq_topic_unlock(t);
    *from = p;
    if (rc == -ENOBUFS)
        return 1;
    return rc;
}
