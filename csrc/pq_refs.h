/*
 * pq_refs.h - a caller's buffer of out-of-band references, shared by the
 * topic (pq_topic_refs.c) and the memory-mode log (pq_log_refs.c).
 *
 * A committed record whose type has PQ_TYPE_OOB set carries (in its
 * value) a reference to a segment of its own, in the binding's format
 * (pyqueue/_oob.py); at most PQ_REF_MAX bytes of it are copied. The cores
 * never open the segment: they report the references of the records they
 * drop (under their lock, before a byte of them may be overwritten), so
 * that the caller unlinks those segments once no reader can still map
 * them. docs/design.md, "Topic: large messages" and "Log: large records".
 */
#ifndef PQ_REFS_H
#define PQ_REFS_H

#include <string.h>

#include "pq_common.h"
#include "pq_segment.h" /* PQ_ERR_CORRUPT */

#define PQ_TYPE_OOB 0x80u
#define PQ_REF_MAX 320u

typedef struct pq_ref {
    uint32_t len;                /* the reference's length (> PQ_REF_MAX: cut) */
    uint8_t bytes[PQ_REF_MAX];
} pq_ref;

/* items[0..max), count filled so far (the functions append; the caller
 * sets count = 0). reclaim: a pending reclaim's token (below): set to 0
 * before the first call, then left as the core set it. */
typedef struct pq_refs {
    pq_ref *items;
    uint32_t max;
    uint32_t count;
    uint64_t reclaim;
} pq_refs;

/* Append a reference of len bytes at p (PQ_REF_MAX of them at most):
 * 0, or -ENOBUFS when refs is full (nothing appended). */
static inline int pq_refs_add(pq_refs *refs, const uint8_t *p, uint32_t len)
{
    if (refs->count >= refs->max)
        return -ENOBUFS;
    pq_ref *r = &refs->items[refs->count++];
    r->len = len;
    memcpy(r->bytes, p, len < PQ_REF_MAX ? len : PQ_REF_MAX);
    return 0;
}

/*
 * A pending reclaim: out-of-band records that a claim, a trim or an expiry
 * moved the start (a topic's head, a log partition's start) past and
 * reported, whose segments no caller has said it unlinked yet. The records
 * stay intact (no claim overwrites them) until one comes back with
 * refs->reclaim == to; every other call reports them again. So a caller
 * killed before its unlinks (SIGKILL, an exception in the binding) leaves
 * them to the next, not to `pyqueue gc`. In the shared segment, changed
 * under its owner's lock only (relaxed loads: the lock orders them; a
 * segment made before the words existed has them zero: none pending).
 * docs/design.md, "A pending reclaim".
 */
typedef struct pq_reclaim {
    _Atomic uint64_t from; /* the first record not yet said unlinked */
    _Atomic uint64_t to;   /* the end of the last one; 0: none pending */
} pq_reclaim;

/*
 * The token a caller is given with a report is the position its report
 * reached: `to` when it holds every reference of [from, to), else the
 * record that did not fit (a re-report that finds more than refs holds).
 * Coming back with `to` ends the reclaim; with a position inside
 * (from, to) it moves `from` there (the rest stays pending). Tokens are
 * positions, and the start only moves on: a stale one (an older reclaim's,
 * or a part another caller moved past) is at or below `from` and ends
 * nothing.
 *
 * Under the lock, first thing in a call that may report references: 0
 * nothing pending (none; or refs->reclaim ended it; or refs is NULL, a
 * caller that reports nothing: it is dropped, its segments left to gc); 1
 * pending, *from and *to set: report its references to this caller too.
 * refs->reclaim is consumed either way.
 */
static inline int pq_reclaim_take(pq_reclaim *r, pq_refs *refs, uint64_t *from, uint64_t *to)
{
    const uint64_t pending = atomic_load_explicit(&r->to, memory_order_relaxed);
    const uint64_t done = refs == NULL ? 0 : refs->reclaim;
    if (refs != NULL)
        refs->reclaim = 0;
    if (pending == 0)
        return 0;
    if (refs == NULL || done == pending) {
        atomic_store_explicit(&r->to, 0, memory_order_relaxed);
        return 0;
    }
    uint64_t f = atomic_load_explicit(&r->from, memory_order_relaxed);
    if (done != 0 && (int64_t)(done - f) > 0 && (int64_t)(pending - done) > 0) {
        /* Its caller unlinked the segments of [from, done). */
        atomic_store_explicit(&r->from, done, memory_order_relaxed);
        f = done;
    }
    *from = f;
    *to = pending;
    return 1;
}

/* Under the lock: a pending reclaim that cannot be reported (its range is
 * not the ring's: damage) is dropped. */
static inline void pq_reclaim_drop(pq_reclaim *r)
{
    atomic_store_explicit(&r->to, 0, memory_order_relaxed);
}

/*
 * Under the lock, after pq_reclaim_take gave [from, to), with the ring's
 * start h (head), tail tl and size: 1 walk it, reporting into refs (then
 * pq_reclaim_reported); 0 nothing to report - announced by a holder that
 * died before the start moved (h is from: the records are ahead of the
 * start as before, for a later drop to report), dropped; PQ_ERR_CORRUPT
 * not a range of the ring behind the start (the start only moves on:
 * damage, and a walk over it could read what a claim wrote), dropped;
 * -EINVAL refs has no room.
 */
static inline int pq_reclaim_check(pq_reclaim *r, const pq_refs *refs, uint64_t from,
                                   uint64_t to, uint64_t h, uint64_t tl, uint64_t capacity)
{
    if (h == from) {
        pq_reclaim_drop(r);
        return 0;
    }
    if ((int64_t)(to - from) <= 0 || (int64_t)(h - to) < 0 || tl - from > capacity) {
        pq_reclaim_drop(r);
        return PQ_ERR_CORRUPT;
    }
    return refs->count >= refs->max ? -EINVAL : 1;
}

/*
 * Under the lock, after the walk of [from, to) that appended to refs from
 * index before on: rc is the walk's code, p where it stopped. -ENOBUFS:
 * reported, with the token - `to` when refs holds them all (rc 0), else
 * where the report stopped (rc -ENOBUFS: a caller with less room than the
 * reporter had, or a record the drop passed CLAIMED whose writer committed
 * it out of band since - nobody reads it, its segment goes with the
 * others), the rest staying pending. PQ_ERR_CORRUPT: not the records that
 * were reported (damage): dropped, their segments left to `pyqueue gc`.
 */
static inline int pq_reclaim_reported(pq_reclaim *r, pq_refs *refs, int rc, uint64_t p,
                                      uint64_t to, uint32_t before)
{
    if (rc == PQ_ERR_CORRUPT || (rc == 0 && p != to)) {
        refs->count = before;
        pq_reclaim_drop(r);
        return PQ_ERR_CORRUPT;
    }
    refs->reclaim = rc == 0 ? to : p;
    return -ENOBUFS;
}

/*
 * Under the lock, with the references of every out-of-band record of
 * [from, to) just appended to refs, before the start moves past them:
 * announce them (from first; release on to: a holder that dies after this
 * store leaves a complete announcement, and one that dies before it leaves
 * the start where it was) and give the caller its token.
 */
static inline void pq_reclaim_start(pq_reclaim *r, uint64_t from, uint64_t to, pq_refs *refs)
{
    atomic_store_explicit(&r->from, from, memory_order_relaxed);
    atomic_store_explicit(&r->to, to, memory_order_release);
    refs->reclaim = to;
}

#endif /* PQ_REFS_H */
