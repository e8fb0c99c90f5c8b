/* pq_topic_pass.c - walk a topic's head over records, reporting the
 * out-of-band ones (pq_topic_internal.h). Used by the claim, the trim and
 * the reference scan. */
#define _GNU_SOURCE
#include "pq_topic_internal.h"

#include <string.h>

int pq_topic_pass(const pq_topic *t, uint64_t *h, uint64_t *hm, uint64_t target, uint64_t tl,
                  pq_topic_refs *refs, uint32_t *n_oob, uint64_t *last_oob_end,
                  int stop_at_claimed)
{
    uint64_t p = *h, m = *hm;
    int rc = 0;
    /* Bounded: each turn moves p on by at least one 16-byte record, and
     * p never passes tl (checked), at most capacity / 16 turns. */
    while ((int64_t)(target - p) > 0) {
        if (p == tl || tl - p > t->capacity) {
            rc = PQ_ERR_CORRUPT;
            break;
        }
        pq_record_header *rec = pq_topic_header_at(t, p);
        /* acquire: pairs with the commit's release, so the payload of an
         * out-of-band record (its reference) is complete when copied. */
        uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
        uint64_t size = pq_record_size(pq_ctl_len(ctl));
        if (pq_ctl_tag(ctl) != pq_record_tag(p) || size > t->capacity - (p & t->mask) ||
            size > tl - p) {
            rc = PQ_ERR_CORRUPT;
            break;
        }
        uint8_t st = pq_ctl_state(ctl);
        if (st == PQ_REC_CLAIMED && stop_at_claimed)
            break;
        if (st == PQ_REC_COMMITTED && (pq_ctl_type(ctl) & PQ_TOPIC_TYPE_OOB)) {
            if (refs != NULL && pq_refs_add(refs, (const uint8_t *)rec + PQ_RECORD_HEADER,
                                            pq_ctl_len(ctl)) < 0) {
                rc = -ENOBUFS;
                break;
            }
            if (n_oob != NULL)
                (*n_oob)++;
            if (last_oob_end != NULL)
                *last_oob_end = p + size;
        }
        if (st != PQ_REC_PADDING)
            m++;
        p += size;
    }
    *h = p;
    *hm = m;
    return rc;
}
