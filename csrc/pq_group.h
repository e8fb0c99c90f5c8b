/*
 * pq_group.h - consumer groups of a log: membership, partition assignment,
 * and committed offsets fenced by assignment epochs.
 *
 * A group table lives in the log's shared memory (memory mode) or in its
 * control file (directory mode): a header with the table lock (creating
 * and deleting groups), then max_groups groups of `stride` bytes. A group
 * has a name, a robust process-shared lock, a generation (bumped by every
 * rebalance), PQ_GROUP_MEMBERS member slots and one pq_group_part per
 * partition: the committed offset, the member that owns the partition and
 * the epoch at which it got it.
 *
 * Membership: a member is a process's consumer, known by a member id that
 * is never reused within the group. It is removed when it leaves, when its
 * process is dead (pid + start time, pq_proc.h) or when it has not polled
 * for its timeout. Every change of membership rebalances under the group
 * lock: a sticky assignment that moves only the partitions it must, each
 * moved partition getting the new generation as its epoch.
 *
 * Fencing: a commit names, for each partition, the epoch at which the
 * member got it; under the lock it succeeds only if every partition still
 * has that owner and epoch (-ESTALE otherwise, and nothing is written).
 * So once a partition has moved, its former owner can no longer commit
 * it: two members never commit the same partition.
 *
 * Returns: >= 0, or -errno; nothing prints.
 */
#ifndef PQ_GROUP_H
#define PQ_GROUP_H

#include <pthread.h>

#include "pq_common.h"
#include "pq_wait.h"

#define PQ_GROUP_NAME_MAX 64u    /* bytes, the terminating NUL included */
#define PQ_GROUP_MEMBERS 64u
#define PQ_GROUP_MAX_GROUPS 256u
#define PQ_GROUP_NO_OFFSET UINT64_MAX

typedef struct pq_group_member {
    _Atomic uint64_t owner;        /* pq_proc_pack of its process; 0: free slot */
    _Atomic uint64_t member_id;
    _Atomic int64_t heartbeat_ns;  /* CLOCK_MONOTONIC of its last poll */
    _Atomic int64_t timeout_ns;    /* removed when heartbeat is older (0: never) */
} pq_group_member;

typedef struct pq_group_part {
    _Atomic uint64_t committed;    /* the next offset to read; PQ_GROUP_NO_OFFSET: none */
    _Atomic uint64_t owner_id;     /* member id that owns it; 0: nobody */
    _Atomic uint64_t epoch;        /* the generation at which that owner got it */
    _Atomic uint64_t committed_ms; /* wall clock of the last commit (for tools) */
} pq_group_part;

typedef struct pq_group {
    char name[PQ_GROUP_NAME_MAX];  /* "": a free slot (under the table and group locks) */
    PQ_ALIGNED_LINE pthread_mutex_t lock; /* initialized once, with the table */
    _Atomic uint64_t incarnation;  /* bumped when the slot's group is made or deleted */
    _Atomic uint64_t generation;
    _Atomic uint64_t next_member_id;
    pq_group_member members[PQ_GROUP_MEMBERS];
    pq_group_part parts[];         /* one per partition */
} pq_group;

typedef struct pq_group_table_hdr {
    pthread_mutex_t lock;          /* creating and deleting groups */
    uint32_t max_groups;
    uint32_t partitions;
    uint64_t offset;               /* of the first group, from the segment's base */
    uint64_t stride;
} pq_group_table_hdr;

/* A process-local view of a group table. */
typedef struct pq_group_table {
    pq_group_table_hdr *hdr;
    uint8_t *groups;
    uint32_t max_groups;
    uint32_t partitions;
    uint64_t stride;
    pq_event *wake; /* notified after every rebalance (pollers wait on it) */
} pq_group_table;

/* What a tool is told about a member. */
typedef struct pq_group_member_info {
    int32_t pid;
    int32_t alive;          /* 1, 0, or -errno when it could not be told */
    uint64_t member_id;
    int64_t idle_ns;        /* since its last poll */
    uint32_t partitions;    /* partitions it owns */
} pq_group_member_info;

/* Bytes of the groups themselves (after the header); 0 for bad arguments. */
uint64_t pq_group_table_size(uint32_t max_groups, uint32_t partitions);

/*
 * Initialize a table: its header at hdr, the groups at seg_base + offset
 * (zeroed memory of pq_group_table_size bytes).
 */
int pq_group_table_init(pq_group_table_hdr *hdr, void *seg_base, uint64_t offset,
                        uint32_t max_groups, uint32_t partitions);

/* Open a table whose header is at hdr in a segment of seg_size bytes;
 * PQ_ERR_TRUNCATED when it does not fit. */
int pq_group_table_open(pq_group_table *t, pq_group_table_hdr *hdr, void *seg_base,
                        uint64_t seg_size, uint32_t partitions, pq_event *wake);

/*
 * The index of the group called name (NUL-terminated, 1..63 bytes):
 * >= 0, and its incarnation (for pq_group_join); -ENOENT when there is
 * none and !create; -ENOSPC when the table is full; -EINVAL for a bad
 * name.
 */
int pq_group_find(pq_group_table *t, const char *name, int create, uint64_t *incarnation);

/* The name of group g into out[PQ_GROUP_NAME_MAX]; -ENOENT for a free slot. */
int pq_group_name(pq_group_table *t, uint32_t g, char *out);

/* Remove group g and its offsets: -EBUSY while it has members. */
int pq_group_delete(pq_group_table *t, uint32_t g);

/*
 * Join group g, of the incarnation pq_group_find gave, as a member of this
 * process (timeout_ns: removed when it does not poll for that long; 0:
 * never). Rebalances. *member_id is never 0. -ENOENT when the group was
 * deleted since (find it again); -EUSERS when every member slot is held
 * by a live member.
 */
int pq_group_join(pq_group_table *t, uint32_t g, uint64_t incarnation, int64_t timeout_ns,
                  uint64_t *member_id);

/* Leave (rebalances); 0 also when the member was already removed. */
int pq_group_leave(pq_group_table *t, uint32_t g, uint64_t member_id);

/* Record a poll of member_id: 0, or -ESTALE when it is no longer a member. */
int pq_group_heartbeat(pq_group_table *t, uint32_t g, uint64_t member_id);

/*
 * Remove the members whose process is dead or whose heartbeat is older
 * than their timeout, and rebalance: the count removed.
 */
int pq_group_reap(pq_group_table *t, uint32_t g);

/* The group's generation (acquire: a reader that sees it then reads the
 * assignment of that rebalance, or a later one). */
uint64_t pq_group_generation(pq_group_table *t, uint32_t g);
const _Atomic uint64_t *pq_group_generation_word(pq_group_table *t, uint32_t g);

/*
 * The partitions member_id owns: epochs[p] = the epoch it got p at, or 0
 * where it does not own p (epochs has t->partitions entries), and the
 * generation. -ESTALE when it is no longer a member.
 */
int pq_group_assignment(pq_group_table *t, uint32_t g, uint64_t member_id, uint64_t *epochs,
                        uint64_t *generation);

/*
 * Commit offsets[i] for partitions parts[i], which member_id got at
 * epochs[i]: all or nothing. -ESTALE when any of them has moved or the
 * member was removed (nothing written), -EINVAL.
 */
int pq_group_commit(pq_group_table *t, uint32_t g, uint64_t member_id, const uint32_t *parts,
                    const uint64_t *offsets, const uint64_t *epochs, uint32_t n,
                    uint64_t now_ms);

/* The committed offset of a partition: 0 and *offset; -ENODATA when none. */
int pq_group_committed(pq_group_table *t, uint32_t g, uint32_t part, uint64_t *offset,
                       uint64_t *committed_ms);

/* Set a committed offset without fencing (restoring saved offsets into a
 * fresh table, or an administrator's reset). PQ_GROUP_NO_OFFSET clears. */
int pq_group_set_committed(pq_group_table *t, uint32_t g, uint32_t part, uint64_t offset,
                           uint64_t committed_ms);

/* Up to max members of group g (checks their liveness): the count. */
int pq_group_members(pq_group_table *t, uint32_t g, pq_group_member_info *out, uint32_t max);

/* The member id that owns a partition (0: nobody). */
uint64_t pq_group_owner(pq_group_table *t, uint32_t g, uint32_t part);

#endif /* PQ_GROUP_H */
