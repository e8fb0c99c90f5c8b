/*
 * pq_wq_internal.h - what the files of the work queue (pq_wq*.c) share:
 * small helpers, and the steps that run under the queue's lock. Not part
 * of the API (pq_wq.h).
 */
#ifndef PQ_WQ_INTERNAL_H
#define PQ_WQ_INTERNAL_H

#include "pq_wq.h"

#include <pthread.h>

/* now + d, saturated (a delay or a window from the segment may be huge). */
static inline int64_t pq_wq_after(int64_t now, int64_t d)
{
    return d > INT64_MAX - now ? INT64_MAX : now + d;
}

static inline pq_wq_slot *pq_wq_slot_of(const pq_wq *q, uint64_t id)
{
    return &q->slots[id & (q->nslots - 1)];
}

static inline void pq_wq_count(pq_wq *q, int which)
{
    atomic_fetch_add_explicit(&q->ctl->counters[which], 1, memory_order_relaxed);
}

/* Announce a change to the waiters of ev: bump its sequence word first
 * (release: what changed is visible to whoever sees the new value), then
 * notify n of them (no system call when nobody waits). */
static inline void pq_wq_announce(_Atomic uint64_t *seq, pq_event *ev, int n)
{
    atomic_fetch_add_explicit(seq, 1, memory_order_release);
    pq_event_notify(ev, n);
}

/* Under the lock: message id may be deliverable now or soon: the scan
 * hint must not be past it. */
static inline void pq_wq_rescan(pq_wq *q, uint64_t id)
{
    if (atomic_load_explicit(&q->ctl->scan, memory_order_relaxed) > id)
        atomic_store_explicit(&q->ctl->scan, id, memory_order_relaxed);
}

static inline void pq_wq_unlock(pq_wq *q)
{
    pthread_mutex_unlock(&q->ctl->lock);
}

/* Are a slot's payload bounds inside the data area? (Corrupt segments.) */
static inline int pq_wq_slot_sane(const pq_wq *q, const pq_wq_slot *s)
{
    return s->len <= q->max_payload && (s->pos & q->mask) + s->len <= q->capacity;
}

/* Take the lock (a dead holder's leftovers repaired): 0, -errno. */
int pq_wq_lock(pq_wq *q);
/* This process's owner word (pid | start time). */
int pq_wq_me(uint64_t *me);
/* Who this process is, then the lock: the prologue of every verb that
 * marks messages as its own. */
int pq_wq_lock_as(pq_wq *q, uint64_t *me);
/* Under the lock: pass the DONE messages at the head; 1 when it moved. */
int pq_wq_advance_head(pq_wq *q);
/* A delivery's fields from its slot. */
void pq_wq_fill(const pq_wq *q, pq_wq_slot *s, uint64_t id, pq_wq_delivery *d);
/* Under the lock: the slot of message id when `me` holds it in `state`
 * (with that delivery count, unless deliveries is UINT32_MAX), or NULL. */
pq_wq_slot *pq_wq_slot_held(pq_wq *q, uint64_t me, uint64_t id, uint32_t deliveries,
                            uint32_t state);

#endif /* PQ_WQ_INTERNAL_H */
