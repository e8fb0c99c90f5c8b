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

#endif /* PQ_LOG_INTERNAL_H */
