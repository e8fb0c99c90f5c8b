/*
 * pq_proc.h - process identity and liveness.
 *
 * A process is identified by its pid and its start time (field 22 of
 * /proc/PID/stat, clock ticks since boot), so that a pid reused by an
 * unrelated process is not taken for the original owner.
 */
#ifndef PQ_PROC_H
#define PQ_PROC_H

#include "pq_common.h"

typedef struct pq_proc_id {
    int32_t pid;
    uint64_t start_time;
} pq_proc_id;

/* The calling process's identity. Cached; refreshed in a forked child. */
int pq_proc_self(pq_proc_id *out);

/*
 * Forks this process is away from its ancestor: bumped in the child of
 * every fork once pq_proc_self has been called. A cheap "am I still the
 * process that cached this?" for hot paths: cache it next to anything
 * derived from pq_proc_self and compare.
 */
extern unsigned pq_proc_forks;

/* Start time of pid. -ESRCH when there is no such process (or a zombie). */
int pq_proc_start_time(int32_t pid, uint64_t *out);

/*
 * 1 when the process (pid, start_time) is alive, 0 when it is gone (exited,
 * a zombie, or the pid now belongs to another process), -errno when it
 * cannot be told. start_time == 0 matches any start time.
 * Only the low 32 bits of start_time are compared when start_time_bits32
 * is set (the record headers keep 32 bits).
 */
int pq_proc_alive(int32_t pid, uint64_t start_time, int start_time_bits32);

/* Pack/unpack an owner word as stored in shared memory. */
static inline uint64_t pq_proc_pack(const pq_proc_id *id)
{
    return (uint64_t)(uint32_t)id->pid | ((uint64_t)(uint32_t)id->start_time << 32);
}

static inline void pq_proc_unpack(uint64_t word, int32_t *pid, uint64_t *start32)
{
    *pid = (int32_t)(uint32_t)(word & 0xffffffffu);
    *start32 = word >> 32;
}

#endif /* PQ_PROC_H */
