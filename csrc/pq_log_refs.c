/* pq_log_refs.c - out-of-band records of a memory-mode log: the reference
 * a dropped record reports (pq_log_take_ref), and the list of the live
 * ones (pq_log_scan_refs, for `pyqueue gc`). See pq_log.h and
 * docs/design.md ("Log: large records"). */
#define _GNU_SOURCE
#include "pq_log_internal.h"

#include <string.h>

int pq_log_take_ref(const pq_record_header *rec, uint64_t ctl, pq_refs *refs)
{
    const uint8_t *pl = (const uint8_t *)rec + PQ_RECORD_HEADER;
    uint64_t len = pq_ctl_len(ctl);
    pq_log_rec_hdr rh;
    if (len < PQ_LOG_REC_HDR)
        return 0;
    memcpy(&rh, pl, sizeof rh);
    uint64_t kl = rh.key_len == PQ_LOG_NO_KEY ? 0 : rh.key_len;
    if (kl + rh.headers_len > len - PQ_LOG_REC_HDR)
        return 0; /* damaged: it names nothing a reader could map */
    uint64_t at = PQ_LOG_REC_HDR + kl + rh.headers_len;
    return pq_refs_add(refs, pl + at, (uint32_t)(len - at));
}

int pq_log_walk_refs(const pq_log *l, const uint8_t *data, uint64_t *p, uint64_t end,
                     uint64_t tl, pq_refs *refs)
{
    uint64_t q = *p;
    int rc = 0;
    /* Bounded: q only grows, by a whole record, and never passes end
     * (checked against tl, at most the ring's size ahead). */
    while ((int64_t)(end - q) > 0) {
        const pq_record_header *rec = (const pq_record_header *)(data + (q & l->mask));
        /* acquire: pairs with the commit's release, so a COMMITTED
         * record's reference is complete when copied. */
        uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
        uint64_t size = pq_record_size(pq_ctl_len(ctl));
        if (pq_ctl_tag(ctl) != pq_record_tag(q) || size > l->capacity - (q & l->mask) ||
            size > tl - q) {
            rc = PQ_ERR_CORRUPT;
            break;
        }
        /* Only committed records name a live segment: a CLAIMED one's
         * producer is alive (gc checks that first) or its record is
         * abandoned, never read. */
        if (pq_ctl_state(ctl) == PQ_REC_COMMITTED && (pq_ctl_type(ctl) & PQ_TYPE_OOB)) {
            rc = pq_log_take_ref(rec, ctl, refs);
            if (rc < 0)
                break;
        }
        q += size;
    }
    *p = q;
    return rc;
}

int pq_log_reclaim_pending(const pq_log *l, uint32_t part, uint64_t tl, pq_refs *refs)
{
    pq_log_part *pt = pq_log_part_at(l, part);
    uint64_t from, to;
    if (!pq_reclaim_take(&pt->reclaim, refs, &from, &to))
        return 0;
    /* relaxed: under the lock. */
    uint64_t h = atomic_load_explicit(&pt->start_pos, memory_order_relaxed);
    int rc = pq_reclaim_check(&pt->reclaim, refs, from, to, h, tl, l->capacity);
    if (rc <= 0)
        return rc;
    uint64_t p = from;
    const uint32_t before = refs->count;
    rc = pq_log_walk_refs(l, pq_log_data(l, part), &p, to, tl, refs);
    return pq_reclaim_reported(&pt->reclaim, refs, rc, p, to, before);
}

int pq_log_scan_refs(pq_log *l, uint32_t part, uint64_t *from, pq_refs *refs)
{
    if (part >= l->partitions || refs == NULL || from == NULL || refs->count > refs->max)
        return -EINVAL;
    pq_log_part *pt = pq_log_part_at(l, part);
    uint8_t *data = pq_log_data(l, part);
    int rc = pq_log_lock(l, part);
    if (rc < 0)
        return rc;
    /* relaxed: these words only change under the lock, which we hold. */
    uint64_t tl = atomic_load_explicit(&pt->tail, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&pt->start_pos, memory_order_relaxed);
    if ((tl & (PQ_RECORD_ALIGN - 1)) != 0 || tl - h > l->capacity) {
        pthread_mutex_unlock(&pt->claim_lock);
        return PQ_ERR_CORRUPT;
    }
    /* From *from if it is still inside [start, tail] (an earlier call
     * stopped there), else from the start. A *from that is not a record
     * boundary is caught by the tag check below. */
    uint64_t p = h;
    if ((int64_t)(*from - h) > 0 && (int64_t)(tl - *from) >= 0)
        p = *from;
    rc = pq_log_walk_refs(l, data, &p, tl, tl, refs);
    pthread_mutex_unlock(&pt->claim_lock);
    *from = p;
    if (rc == -ENOBUFS)
        return 1;
    return rc;
}
