/*
 * pq_fault.h - test-only fault injection: stop the process at a chosen
 * point inside the core, so that a test can SIGKILL it exactly there.
 *
 * Built only with -DPQ_FAULT_INJECTION (PYQUEUE_FAULT_INJECTION=1 for
 * setup.py; csrc/tests builds a second copy of the core with it for
 * test_fault). Without it PQ_FAULT_POINT compiles to nothing and
 * pq_fault_copy to a plain memcpy: the release build is the same code.
 *
 * With it, PQ_FAULT_POINT(id) calls pq_fault_hit(id), which stops the
 * process with raise(SIGSTOP) when the environment variable PYQUEUE_FAULT
 * names that point: "after_claim" stops at the first hit of after_claim,
 * "after_claim:3" at the third. The variable is read at the first fault
 * point the process reaches, and the hits of the named point are counted
 * per process: a forked child reads the variable again and counts afresh.
 * The test sees the process stopped (state 'T' in /proc/PID/stat, or
 * waitpid WUNTRACED) and SIGKILLs it, or lets it go on with SIGCONT. A spec
 * that names no point disarms; nothing is printed.
 */
#ifndef PQ_FAULT_H
#define PQ_FAULT_H

#include <string.h>

#include "pq_common.h"

enum pq_fault_point {
    PQ_FAULT_NONE = 0,
    PQ_FAULT_AFTER_CLAIM = 1,   /* producer: claim published, lock released, before the copy */
    PQ_FAULT_MID_COPY = 2,      /* producer: half of the payload copied in */
    PQ_FAULT_BEFORE_COMMIT = 3, /* producer: payload copied, before the COMMITTED store */
    PQ_FAULT_AFTER_PEEK = 4,    /* consumer: copied out, before the consume CAS */
    PQ_FAULT_AFTER_CONSUME = 5, /* consumer: CAS on head done, before anything else */
    PQ_FAULT_PARKED = 6,        /* registered as a waiter, about to park (both waits) */
    PQ_FAULT_IN_CLAIM_LOCK = 7, /* holding the claim lock, claim announced */
    PQ_FAULT_ROLL_BEGIN = 8,    /* directory log: the next segment's files made, control untouched */
    PQ_FAULT_MID_ROLL = 9,      /* directory log: roll half stored (seqlock odd), holding the lock */
    PQ_FAULT_IN_LOCK = 10,      /* any lock of any kind just taken (pq_lock_take) */
    PQ_FAULT_IN_GROW = 11,      /* holding the claim lock, a grown epoch published, before its claim */
    PQ_FAULT_MID_HEAD_MOVE = 12, /* topic: holding its lock, head_msgs stored, head not yet */
    PQ_FAULT_RECLAIM_REPORTED = 13, /* topic, memory log: a reclaim reported, lock released */
    PQ_FAULT_HEAD_MOVE_ANNOUNCED = 14, /* topic: holding its lock, a head move announced */
    PQ_FAULT_TRIM_CLEARED = 15, /* ring: holding the claim lock, a dead level's mark cleared, region not emptied */
    PQ_FAULT_TRIM_EMPTIED = 16, /* ring: holding the claim lock, a dead level's region just emptied */
    PQ_FAULT_PEEK_LOADED_HEAD = 17, /* consumer: head loaded by a peek, nothing read yet */
    PQ_FAULT_NPOINTS = 18,
};

/* Name of a point ("after_claim", ...); NULL when id is out of range. */
const char *pq_fault_name(int id);

/*
 * Parse a PYQUEUE_FAULT spec, "name" or "name:N" (N >= 1). 0 and *point,
 * *nth set on success; -EINVAL when it names no point or N is bad.
 */
int pq_fault_parse(const char *spec, int *point, uint64_t *nth);

#ifdef PQ_FAULT_INJECTION
#define PQ_FAULT_ENABLED 1
void pq_fault_hit(int id);
/* Forget the spec read and the hits counted: the next hit reads the
 * environment again (tests). */
void pq_fault_reset(void);
#define PQ_FAULT_POINT(id) pq_fault_hit(id)
#define PQ_FAULT_REARM() pq_fault_reset()
#else
#define PQ_FAULT_REARM() ((void)0)
#define PQ_FAULT_ENABLED 0
#define PQ_FAULT_POINT(id) ((void)0)
#endif

/*
 * Copy n bytes from src to dst + off, part of a payload of `total` bytes
 * being written in place. In a fault build the copy that crosses total / 2
 * is split there around PQ_FAULT_MID_COPY; otherwise this is memcpy.
 */
static inline void pq_fault_copy(uint8_t *dst, uint64_t off, const void *src, size_t n,
                                 uint64_t total)
{
#ifdef PQ_FAULT_INJECTION
    uint64_t mid = total / 2;
    if (n != 0 && off <= mid && mid < off + n) {
        size_t first = (size_t)(mid - off);
        memcpy(dst + off, src, first);
        pq_fault_hit(PQ_FAULT_MID_COPY);
        memcpy(dst + mid, (const uint8_t *)src + first, n - first);
        return;
    }
#else
    (void)total;
#endif
    memcpy(dst + off, src, n);
}

#endif /* PQ_FAULT_H */
