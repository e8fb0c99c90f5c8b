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

#define PQ_TYPE_OOB 0x80u
#define PQ_REF_MAX 320u

typedef struct pq_ref {
    uint32_t len;                /* the reference's length (> PQ_REF_MAX: cut) */
    uint8_t bytes[PQ_REF_MAX];
} pq_ref;

/* items[0..max), count filled so far (the functions append; the caller
 * sets count = 0). reclaim: the topic's (pq_topic.h, "pending reclaim"):
 * set to 0 before the first call, then left as the core set it; the log
 * ignores it. */
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

#endif /* PQ_REFS_H */
