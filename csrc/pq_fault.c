/* pq_fault.c - test-only fault injection (see pq_fault.h). The names and
 * the parser exist in every build; the hook only with PQ_FAULT_INJECTION. */
#define _GNU_SOURCE
#include "pq_fault.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>

static const char *const pq_fault_names[PQ_FAULT_NPOINTS] = {
    [PQ_FAULT_NONE] = "none",
    [PQ_FAULT_AFTER_CLAIM] = "after_claim",
    [PQ_FAULT_MID_COPY] = "mid_copy",
    [PQ_FAULT_BEFORE_COMMIT] = "before_commit",
    [PQ_FAULT_AFTER_PEEK] = "after_peek",
    [PQ_FAULT_AFTER_CONSUME] = "after_consume",
    [PQ_FAULT_PARKED] = "parked",
    [PQ_FAULT_IN_CLAIM_LOCK] = "in_claim_lock",
    [PQ_FAULT_IN_GROW] = "in_grow",
    [PQ_FAULT_MID_HEAD_MOVE] = "mid_head_move",
    [PQ_FAULT_RECLAIM_REPORTED] = "reclaim_reported",
    [PQ_FAULT_HEAD_MOVE_ANNOUNCED] = "head_move_announced",
    [PQ_FAULT_TRIM_CLEARED] = "trim_cleared",
    [PQ_FAULT_TRIM_EMPTIED] = "trim_emptied",
    [PQ_FAULT_PEEK_LOADED_HEAD] = "peek_loaded_head",
    [PQ_FAULT_ROLL_BEGIN] = "roll_begin",
    [PQ_FAULT_MID_ROLL] = "mid_roll",
    [PQ_FAULT_IN_LOCK] = "in_lock",
};

const char *pq_fault_name(int id)
{
    return id >= 0 && id < PQ_FAULT_NPOINTS ? pq_fault_names[id] : NULL;
}

int pq_fault_parse(const char *spec, int *point, uint64_t *nth)
{
    if (spec == NULL)
        return -EINVAL;
    const char *colon = strchr(spec, ':');
    size_t len = colon ? (size_t)(colon - spec) : strlen(spec);
    uint64_t n = 1;
    if (colon != NULL) {
        char *end;
        if (colon[1] < '0' || colon[1] > '9')
            return -EINVAL;
        errno = 0;
        unsigned long long v = strtoull(colon + 1, &end, 10);
        if (errno != 0 || *end != '\0' || v == 0)
            return -EINVAL;
        n = (uint64_t)v;
    }
    for (int id = PQ_FAULT_NONE + 1; id < PQ_FAULT_NPOINTS; id++) {
        if (strlen(pq_fault_names[id]) == len && strncmp(spec, pq_fault_names[id], len) == 0) {
            *point = id;
            *nth = n;
            return 0;
        }
    }
    return -EINVAL;
}

#ifdef PQ_FAULT_INJECTION

enum { PQ_FAULT_UNREAD = 0, PQ_FAULT_READING = 1, PQ_FAULT_READY = 2 };

static _Atomic int pq_fault_state;       /* PQ_FAULT_UNREAD/READING/READY */
static int pq_fault_point;               /* armed point, PQ_FAULT_NONE: disarmed */
static uint64_t pq_fault_nth;            /* stop at this hit of it */
static _Atomic uint64_t pq_fault_hits;   /* hits of the armed point so far */
static pthread_once_t pq_fault_once = PTHREAD_ONCE_INIT;

void pq_fault_reset(void)
{
    atomic_store_explicit(&pq_fault_hits, 0, memory_order_relaxed);
    atomic_store_explicit(&pq_fault_state, PQ_FAULT_UNREAD, memory_order_release);
}

static void pq_fault_register_atfork(void)
{
    /* A forked child reads PYQUEUE_FAULT again and counts its own hits. */
    pthread_atfork(NULL, NULL, pq_fault_reset);
}

static void pq_fault_read_env(void)
{
    int expected = PQ_FAULT_UNREAD;
    if (atomic_compare_exchange_strong_explicit(&pq_fault_state, &expected, PQ_FAULT_READING,
                                                memory_order_acquire, memory_order_acquire)) {
        pthread_once(&pq_fault_once, pq_fault_register_atfork);
        int point;
        uint64_t nth;
        if (pq_fault_parse(getenv("PYQUEUE_FAULT"), &point, &nth) == 0) {
            pq_fault_point = point;
            pq_fault_nth = nth;
        } else {
            pq_fault_point = PQ_FAULT_NONE;
            pq_fault_nth = 0;
        }
        atomic_store_explicit(&pq_fault_hits, 0, memory_order_relaxed);
        atomic_store_explicit(&pq_fault_state, PQ_FAULT_READY, memory_order_release);
        return;
    }
    /* Another thread is reading it: a few instructions. */
    while (atomic_load_explicit(&pq_fault_state, memory_order_acquire) != PQ_FAULT_READY)
        sched_yield();
}

void pq_fault_hit(int id)
{
    if (PQ_UNLIKELY(atomic_load_explicit(&pq_fault_state, memory_order_acquire) != PQ_FAULT_READY))
        pq_fault_read_env();
    if (PQ_LIKELY(id != pq_fault_point))
        return;
    if (atomic_fetch_add_explicit(&pq_fault_hits, 1, memory_order_relaxed) + 1 == pq_fault_nth)
        raise(SIGSTOP); /* the whole process stops here; SIGKILL or SIGCONT */
}

#endif /* PQ_FAULT_INJECTION */
