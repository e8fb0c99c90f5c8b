/* pq_ring_wait.c - blocking, joinable-queue accounting and statistics for
 * the record ring (the parts built on pq_event). */
#define _GNU_SOURCE
#include "pq_fault.h"
#include "pq_ring.h"
#include "pq_shutdown.h"

/* Set by a pq_ring_claim of this thread that failed on maxsize (pq_ring.c). */
extern _Thread_local const pq_ring_ctl *pq_ring_full_ctl;
extern _Thread_local uint64_t pq_ring_full_passed;

/*
 * Is a committed (or skippable) record at head? Cheap and read-only: it
 * runs while the binding has released the GIL, possibly beside another
 * thread's pq_ring_peek on the same view, so it must not touch the view's
 * process-local caches.
 */
static int pq_ring_readable(pq_ring *r)
{
    pq_ring_ctl *c = r->ctl;
    uint64_t h = atomic_load_explicit(&c->head, memory_order_acquire);
    /* acquire: headers below tail are published (see pq_ring_peek). */
    uint64_t t = atomic_load_explicit(&c->tail, memory_order_acquire);
    if (h == t)
        /* Empty: ready once shut down (the get then raises). A record
         * still being written is waited for even then: shutdown(False)
         * drains it too. */
        return pq_shutdown_seen(r->hdr) != 0;
    /* acquire, after tail: the epochs of every position below it. */
    uint64_t n = atomic_load_explicit(&c->epoch, memory_order_acquire);
    pq_ring_where w;
    if (t - h > r->span || (h & (PQ_RECORD_ALIGN - 1)) != 0 || pq_ring_epoch_find(r, n, h, &w) < 0)
        return 1; /* stale or corrupt: let the caller's peek tell which */
    const pq_record_header *rec =
        (const pq_record_header *)(w.base + ((h - w.start) & (w.cap - 1)));
    uint64_t ctl = atomic_load_explicit(&((pq_record_header *)rec)->ctl, memory_order_acquire);
    pq_ring_mark_if_moved(r->ctl, h, w.level); /* a stale read of a dead level: marked */
    /* Anything but a CLAIMED head is worth a peek (a stale read included). */
    return ((ctl >> PQ_CTL_STATE_SHIFT) & 0xff) != PQ_REC_CLAIMED;
}

static int pq_ring_readable_cb(void *r)
{
    return pq_ring_readable(r);
}

int pq_ring_wait_readable(pq_ring *r, int64_t deadline_ns, uint32_t spin_ns)
{
    if (pq_spin_until(pq_ring_readable_cb, r, spin_ns, deadline_ns))
        return 0;
    uint32_t seq = pq_event_prepare(&r->ctl->readable);
    int rc = 0;
    if (!pq_ring_readable(r)) {
        PQ_FAULT_POINT(PQ_FAULT_PARKED);
        rc = pq_event_park(&r->ctl->readable, seq, deadline_ns);
    }
    pq_event_finish(&r->ctl->readable);
    return rc;
}

/*
 * Has room possibly been made since the failed claim? head moved, or, when
 * that claim failed on maxsize, head_msgs moved past what it saw (a
 * consumer moves head before it counts, see pq_ring.c).
 */
static int pq_ring_room_changed(pq_ring *r, uint64_t seen_head)
{
    if (pq_ring_head(r) != seen_head || pq_shutdown_seen(r->hdr))
        return 1;
    return pq_ring_full_ctl == r->ctl &&
           atomic_load_explicit(&r->ctl->head_msgs, memory_order_acquire) != pq_ring_full_passed;
}

struct pq_room_wait {
    pq_ring *r;
    uint64_t seen_head;
};

static int pq_ring_room_changed_cb(void *arg)
{
    struct pq_room_wait *w = arg;
    return pq_ring_room_changed(w->r, w->seen_head);
}

int pq_ring_wait_writable(pq_ring *r, uint64_t seen_head, int64_t deadline_ns, uint32_t spin_ns)
{
    struct pq_room_wait w = {r, seen_head};
    if (pq_spin_until(pq_ring_room_changed_cb, &w, spin_ns, deadline_ns))
        return 0;
    uint32_t seq = pq_event_prepare(&r->ctl->writable);
    int rc = 0;
    if (!pq_ring_room_changed(r, seen_head)) {
        PQ_FAULT_POINT(PQ_FAULT_PARKED);
        rc = pq_event_park(&r->ctl->writable, seq, deadline_ns);
    }
    pq_event_finish(&r->ctl->writable);
    return rc;
}

int pq_ring_shutdown(pq_ring *r, uint32_t how)
{
    int before = pq_shutdown_set(r->hdr, how);
    if (before < 0)
        return before;
    /* After the flag (pq_shutdown.h): parked getters, putters and joiners
     * of every process return and see it. */
    pq_event_wake_all(&r->ctl->readable);
    pq_event_wake_all(&r->ctl->writable);
    pq_event_wake_all(&r->ctl->tasks_done);
    return before;
}

void pq_ring_tasks_add(pq_ring *r, int64_t n)
{
    atomic_fetch_add_explicit(&r->ctl->unfinished_tasks, n, memory_order_relaxed);
}

int pq_ring_task_done(pq_ring *r)
{
    _Atomic int64_t *u = &r->ctl->unfinished_tasks;
    int64_t v = atomic_load_explicit(u, memory_order_relaxed);
    do {
        if (v <= 0)
            return -EINVAL;
    } while (!atomic_compare_exchange_weak_explicit(u, &v, v - 1, memory_order_acq_rel,
                                                    memory_order_relaxed));
    if (v == 1)
        pq_event_notify(&r->ctl->tasks_done, INT32_MAX);
    return 0;
}

int pq_ring_wait_tasks_done(pq_ring *r, int64_t deadline_ns)
{
    _Atomic int64_t *u = &r->ctl->unfinished_tasks;
    for (;;) {
        if (atomic_load_explicit(u, memory_order_acquire) <= 0)
            return 0;
        uint32_t seq = pq_event_prepare(&r->ctl->tasks_done);
        int rc = 0;
        if (atomic_load_explicit(u, memory_order_acquire) > 0)
            rc = pq_event_park(&r->ctl->tasks_done, seq, deadline_ns);
        pq_event_finish(&r->ctl->tasks_done);
        if (rc < 0)
            return rc;
    }
}

void pq_ring_count(pq_ring *r, enum pq_ring_counter which, uint64_t n)
{
    /* release: pairs with pq_ring_get_stats, which reads the counters
     * first, so it sees the head_msgs a counted consume already added. */
    atomic_fetch_add_explicit(&r->ctl->counters[which], n, memory_order_release);
}

uint64_t pq_ring_depth(const pq_ring *r)
{
    /* Read head_msgs first: it never passes tail_msgs, so the difference
     * cannot go negative. */
    uint64_t passed = atomic_load_explicit(&r->ctl->head_msgs, memory_order_acquire);
    uint64_t claimed = atomic_load_explicit(&r->ctl->tail_msgs, memory_order_acquire);
    return claimed - passed;
}

void pq_ring_get_stats(const pq_ring *r, pq_ring_stats *s)
{
    pq_ring_ctl *c = r->ctl;
    /* Counters first (acquire), then the message counts: dropped and
     * abandoned messages are counted after head_msgs passed them, so the
     * subtractions below cannot go negative (saturated all the same: the
     * binding may count what it likes). */
    s->rejected = atomic_load_explicit(&c->counters[PQ_COUNT_REJECTED], memory_order_acquire);
    s->dropped = atomic_load_explicit(&c->counters[PQ_COUNT_DROPPED], memory_order_acquire);
    /* Records whose producer died were claimed but never enqueued;
     * messages a consumer died with were enqueued and passed by head, but
     * never handed to anyone. */
    uint64_t unwritten = atomic_load_explicit(&c->counters[PQ_COUNT_ABANDONED], memory_order_acquire);
    s->abandoned_taken =
        atomic_load_explicit(&c->counters[PQ_COUNT_ABANDONED_TAKEN], memory_order_acquire);
    s->abandoned = unwritten + s->abandoned_taken;
    uint64_t passed = atomic_load_explicit(&c->head_msgs, memory_order_acquire);
    uint64_t claimed = atomic_load_explicit(&c->tail_msgs, memory_order_acquire);
    uint64_t h = atomic_load_explicit(&c->head, memory_order_acquire);
    uint64_t t = atomic_load_explicit(&c->tail, memory_order_acquire);
    uint64_t gone = s->dropped + s->abandoned;

    s->enqueued = claimed >= unwritten ? claimed - unwritten : 0;
    s->dequeued = passed >= gone ? passed - gone : 0;
    s->depth = claimed >= passed ? claimed - passed : 0;
    s->depth_bytes = t >= h ? t - h : 0;
    s->capacity = r->capacity;
    s->maxsize = r->maxsize;
    s->waiting_producers = pq_event_waiters(&c->writable);
    s->waiting_consumers = pq_event_waiters(&c->readable);
    s->unfinished_tasks = atomic_load_explicit(&c->unfinished_tasks, memory_order_relaxed);
}
