/*
 * pq_wq_dedup.h - the dedup table of a work queue (put(key=...)): the keys
 * put within the dedup window, whatever became of their messages since.
 *
 * A ring of entries in put order: every entry lives for the same window,
 * so they expire in the order they came, and the oldest is always at the
 * ring's head. Capacity: exactly `cap` keys within one window; a put of a
 * new key that finds the ring full is told when the oldest expires (the
 * binding waits for that as for any lack of room). An index (open
 * addressing, linear probing, 2 * cap cells, so never more than half
 * full) maps a key's hash to its entry.
 *
 * Every call runs under the work queue's lock. The ring is the truth and
 * the index is derived from it: a change of the index sets `dirty` first
 * and clears it after, and whoever finds it set (its holder died inside)
 * rebuilds the index from the ring. A ring entry is written before the
 * ring's tail moves past it, so a holder that dies half way leaves either
 * a whole entry or none.
 * Returns: >= 0, or -errno; nothing prints.
 */
#ifndef PQ_WQ_DEDUP_H
#define PQ_WQ_DEDUP_H

#include "pq_common.h"
#include "pq_segment.h"

typedef struct pq_wq_dedup {
    _Atomic uint64_t hash;       /* the key's hash (pq_wq_key_hash: never 0) */
    _Atomic int64_t expires_ns;  /* monotonic; <= now: expired, or given back */
    _Atomic uint64_t id;         /* the message the key was put with */
    uint64_t reserved;
} pq_wq_dedup;

/* The table's words in the queue's control block. */
typedef struct pq_wq_dedup_ctl {
    _Atomic uint64_t head;  /* ring position of the oldest entry kept */
    _Atomic uint64_t tail;  /* the next ring position */
    _Atomic uint32_t dirty; /* an index change in progress (or its holder died in it) */
    uint32_t reserved;
} pq_wq_dedup_ctl;

/* A process-local view of a mapped table. */
typedef struct pq_wq_dedup_table {
    pq_wq_dedup_ctl *ctl;
    pq_wq_dedup *ring;       /* cap entries: position p lives at p & (cap - 1) */
    _Atomic uint32_t *index; /* 2 * cap cells: 0 empty, else 1 + the entry's ring index */
    uint32_t cap;            /* a power of two, or 0: no table */
    int64_t window_ns;
} pq_wq_dedup_table;

/* Bytes of the ring and the index of cap keys (a multiple of 64). */
uint64_t pq_wq_dedup_bytes(uint32_t cap);

/* The view of a table at base (pq_wq_dedup_bytes(cap) bytes, zero when new). */
void pq_wq_dedup_attach(pq_wq_dedup_table *t, pq_wq_dedup_ctl *ctl, void *base, uint32_t cap,
                        int64_t window_ns);

/* Drop the entries expired by now from the ring's head (first rebuilding
 * the index if a holder died changing it). 0, or PQ_ERR_CORRUPT (ring
 * positions that cannot be). Call before the others of a put. */
int pq_wq_dedup_expire(pq_wq_dedup_table *t, int64_t now);

/* The live entry of key hash, or NULL. */
const pq_wq_dedup *pq_wq_dedup_find(const pq_wq_dedup_table *t, uint64_t hash, int64_t now);

/* Room for one more key: 1; 0 when full, with *wake_ns when the oldest
 * entry expires. */
int pq_wq_dedup_room(const pq_wq_dedup_table *t, int64_t *wake_ns);

/* Record key hash for message id until now + window (room checked
 * first). The ring position the entry takes is pq_wq_dedup_next. */
void pq_wq_dedup_add(pq_wq_dedup_table *t, uint64_t hash, uint64_t id, int64_t now);

/* The ring position the next pq_wq_dedup_add takes. */
uint64_t pq_wq_dedup_next(const pq_wq_dedup_table *t);

/* The put of message id, whose entry took ring position pos, never
 * happened (its producer died inside): its key is free again. Nothing
 * when that entry is not (or no longer) message id's. */
void pq_wq_dedup_give_back(pq_wq_dedup_table *t, uint64_t pos, uint64_t id, int64_t now);

/* Keys held now (ring positions in use, given-back ones included until
 * they reach the head). */
uint64_t pq_wq_dedup_used(const pq_wq_dedup_table *t);

#endif /* PQ_WQ_DEDUP_H */
