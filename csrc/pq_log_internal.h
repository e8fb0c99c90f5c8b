/*
 * pq_log_internal.h - what pq_log.c shares with pq_log_refs.c; not part
 * of the API.
 */
#ifndef PQ_LOG_INTERNAL_H
#define PQ_LOG_INTERNAL_H

#include "pq_log.h"
#include "pq_record.h"

static inline pq_log_part *pq_log_part_at(const pq_log *l, uint32_t part)
{
    return (pq_log_part *)(l->parts_base + (uint64_t)part * l->stride);
}
static inline pq_log_index_entry *pq_log_index(const pq_log *l, uint32_t part)
{
    return (pq_log_index_entry *)((uint8_t *)pq_log_part_at(l, part) + sizeof(pq_log_part));
}
static inline uint8_t *pq_log_data(const pq_log *l, uint32_t part)
{
    return (uint8_t *)pq_log_index(l, part) + l->index_entries * sizeof(pq_log_index_entry);
}

/* The partition's claim lock (robust: a dead holder's start is repaired).
 * 0 or the lock's error; the caller unlocks with pthread_mutex_unlock. */
int pq_log_lock(pq_log *l, uint32_t part);

/*
 * Under the lock, for a COMMITTED record (ctl, loaded with acquire) whose
 * type has PQ_TYPE_OOB: append its value (the reference) to refs. A
 * record whose key and headers lengths do not fit its payload names
 * nothing that can be read: 0, nothing reported (its segment, if any, is
 * `pyqueue gc`'s). 0; -ENOBUFS refs is full.
 */
int pq_log_take_ref(const pq_record_header *rec, uint64_t ctl, pq_refs *refs);

/*
 * Under the lock: append to refs the references of the committed
 * out-of-band records from *p to end (a record boundary at or before tl),
 * moving *p over each record. 0; -ENOBUFS refs is full (*p at the record
 * that did not fit); PQ_ERR_CORRUPT.
 */
int pq_log_walk_refs(const pq_log *l, const uint8_t *data, uint64_t *p, uint64_t end,
                     uint64_t tl, pq_refs *refs);

/*
 * Under the lock, first in an append or expiry: a pending reclaim
 * (pq_refs.h) of this partition that this caller did not end is reported
 * to it (-ENOBUFS, refs->reclaim set); -EINVAL when refs has no room for
 * it; 0 nothing pending. Damage (a range that is not the ring's, records
 * that are not the ones reported) drops it: PQ_ERR_CORRUPT, once.
 */
int pq_log_reclaim_pending(const pq_log *l, uint32_t part, uint64_t tl, pq_refs *refs);

#endif /* PQ_LOG_INTERNAL_H */
