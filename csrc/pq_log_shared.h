/*
 * pq_log_shared.h - what both kinds of log keep at offset 256 of their
 * shared control (the memory-mode segment, the directory-mode control
 * file): the log-wide "appended" event and the header of the consumer
 * group table.
 *
 * A consumer of a group reads several partitions, so it cannot park on
 * one partition's event: appenders notify `appended` too (no system call
 * unless someone waits), and so does every rebalance of a group.
 */
#ifndef PQ_LOG_SHARED_H
#define PQ_LOG_SHARED_H

#include "pq_common.h"
#include "pq_group.h"
#include "pq_wait.h"

#define PQ_LOG_SHARED_OFFSET 256u
#define PQ_LOG_MAX_GROUPS 16u /* consumer groups a log has room for */

typedef struct pq_log_shared {
    PQ_ALIGNED_LINE pq_event appended;
    PQ_ALIGNED_LINE pq_group_table_hdr groups;
} pq_log_shared;
_Static_assert(sizeof(pq_log_shared) <= 4096 - PQ_LOG_SHARED_OFFSET, "pq_log_shared fits before 4096");

#endif /* PQ_LOG_SHARED_H */
