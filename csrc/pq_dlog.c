/* pq_dlog.c - the control file of a directory-mode log. See pq_dlog.h and
 * docs/design.md ("Log (directory mode)"). */
#define _GNU_SOURCE
#include "pq_dlog.h"
#include "pq_shutdown.h"

#include <string.h>

#include "pq_claim_lock.h"
#include "pq_fault.h"

#define PQ_DLOG_SNAPSHOT_TRIES 1000

static uint64_t pq_dlog_groups_offset(uint32_t partitions)
{
    return pq_align_up(PQ_DLOG_PARTS_OFFSET + (uint64_t)partitions * sizeof(pq_dlog_part),
                       PQ_CACHE_LINE);
}

static int pq_dlog_args_ok(uint32_t partitions, uint64_t segment_bytes, uint32_t max_groups)
{
    return partitions >= 1 && partitions <= PQ_DLOG_MAX_PARTITIONS &&
           segment_bytes >= PQ_DSEG_MIN_BYTES && segment_bytes <= PQ_DSEG_MAX_BYTES &&
           (segment_bytes & 4095) == 0 && pq_group_table_size(max_groups, partitions) != 0;
}

uint64_t pq_dlog_control_size(uint32_t partitions, uint32_t max_groups)
{
    uint64_t groups = pq_group_table_size(max_groups, partitions);
    if (partitions < 1 || partitions > PQ_DLOG_MAX_PARTITIONS || groups == 0)
        return 0;
    return pq_align_up(pq_dlog_groups_offset(partitions) + groups, 4096);
}

static void pq_dlog_part_empty(pq_dlog_part *pt)
{
    atomic_store_explicit(&pt->last_index_pos, UINT64_MAX, memory_order_relaxed);
}

int pq_dlog_create(void *base, size_t size, uint32_t partitions, uint64_t segment_bytes,
                   uint32_t max_groups)
{
    uint64_t need = pq_dlog_control_size(partitions, max_groups);
    if (!pq_dlog_args_ok(partitions, segment_bytes, max_groups) || need == 0 || size < need ||
        ((uintptr_t)base & 63) != 0)
        return -EINVAL;
    uint64_t params[PQ_DLOG_NPARAMS] = {partitions, segment_bytes, max_groups};
    memset(base, 0, need);
    int rc = pq_segment_init(base, size, PQ_KIND_LOG_DIR, PQ_DLOG_PARTS_OFFSET,
                             need - PQ_DLOG_PARTS_OFFSET, params, PQ_DLOG_NPARAMS);
    if (rc < 0)
        return rc;
    pq_log_shared *sh = (pq_log_shared *)((uint8_t *)base + PQ_LOG_SHARED_OFFSET);
    rc = pq_group_table_init(&sh->groups, base, pq_dlog_groups_offset(partitions), max_groups,
                             partitions);
    if (rc < 0)
        return rc;
    pq_dlog_part *parts = (pq_dlog_part *)((uint8_t *)base + PQ_DLOG_PARTS_OFFSET);
    for (uint32_t p = 0; p < partitions; p++) {
        rc = pq_claim_lock_init(&parts[p].lock);
        if (rc < 0)
            return rc;
        pq_dlog_part_empty(&parts[p]);
    }
    pq_segment_publish(base);
    return 0;
}

int pq_dlog_open(pq_dlog *d, void *base, size_t size)
{
    memset(d, 0, sizeof *d);
    if (((uintptr_t)base & 63) != 0)
        return -EINVAL;
    int rc = pq_segment_check(base, size, PQ_KIND_LOG_DIR);
    if (rc < 0)
        return rc;
    pq_segment_header *h = base;
    uint64_t parts = h->params[PQ_DLOG_PARAM_PARTITIONS];
    uint64_t seg_bytes = h->params[PQ_DLOG_PARAM_SEGMENT_BYTES];
    uint64_t groups = h->params[PQ_DLOG_PARAM_MAX_GROUPS];
    if (parts > PQ_DLOG_MAX_PARTITIONS || groups > PQ_GROUP_MAX_GROUPS ||
        !pq_dlog_args_ok((uint32_t)parts, seg_bytes, (uint32_t)groups))
        return PQ_ERR_CORRUPT;
    uint64_t need = pq_dlog_control_size((uint32_t)parts, (uint32_t)groups);
    if (need > size || h->data_offset != PQ_DLOG_PARTS_OFFSET ||
        h->data_size != need - PQ_DLOG_PARTS_OFFSET)
        return PQ_ERR_TRUNCATED;
    d->hdr = h;
    d->shared = (pq_log_shared *)((uint8_t *)base + PQ_LOG_SHARED_OFFSET);
    d->parts = (pq_dlog_part *)((uint8_t *)base + PQ_DLOG_PARTS_OFFSET);
    d->partitions = (uint32_t)parts;
    d->segment_bytes = seg_bytes;
    if (d->shared->groups.offset != pq_dlog_groups_offset((uint32_t)parts))
        return PQ_ERR_CORRUPT;
    return pq_group_table_open(&d->groups, &d->shared->groups, base, need, (uint32_t)parts,
                               &d->shared->appended);
}

int pq_dlog_restore(pq_dlog *d, uint32_t part, uint64_t start_offset, uint64_t active_base,
                    const pq_dseg_cursor *c, uint64_t closed_bytes)
{
    if (part >= d->partitions || c == NULL || start_offset > c->next_offset ||
        active_base > c->next_offset || c->pos > d->segment_bytes)
        return -EINVAL;
    pq_dlog_part *pt = &d->parts[part];
    /* relaxed: nobody else maps the control yet; publishing it (the
     * caller's unlock of the opener's lock files) orders these. */
    atomic_store_explicit(&pt->last_index_pos, c->last_index_pos, memory_order_relaxed);
    atomic_store_explicit(&pt->records, c->records, memory_order_relaxed);
    atomic_store_explicit(&pt->max_timestamp_ms, c->max_timestamp_ms, memory_order_relaxed);
    atomic_store_explicit(&pt->closed_bytes, closed_bytes, memory_order_relaxed);
    atomic_store_explicit(&pt->active_base, active_base, memory_order_relaxed);
    atomic_store_explicit(&pt->end_pos, c->pos, memory_order_relaxed);
    atomic_store_explicit(&pt->allocated, c->pos, memory_order_relaxed);
    atomic_store_explicit(&pt->end_offset, c->next_offset, memory_order_relaxed);
    atomic_store_explicit(&pt->index_count, c->index_count, memory_order_relaxed);
    atomic_store_explicit(&pt->start_offset, start_offset, memory_order_relaxed);
    atomic_fetch_add_explicit(&pt->seg_gen, 1, memory_order_release);
    return 0;
}

/* Finish a roll whose holder died after it began storing (seq odd): every
 * store of the roll is an assignment of a value saved before it began. */
static void pq_dlog_finish_roll(pq_dlog_part *pt)
{
    uint64_t seq = atomic_load_explicit(&pt->seq, memory_order_relaxed);
    if ((seq & 1) == 0)
        return;
    /* The seqlock's opening fence: in pq_dlog_roll it follows the odd
     * store, but a roller that died may not have reached it. */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&pt->closed_bytes,
                          atomic_load_explicit(&pt->roll_closed_bytes, memory_order_relaxed),
                          memory_order_relaxed);
    atomic_store_explicit(&pt->active_base,
                          atomic_load_explicit(&pt->end_offset, memory_order_relaxed),
                          memory_order_relaxed);
    atomic_store_explicit(&pt->end_pos, 0, memory_order_relaxed);
    atomic_store_explicit(&pt->allocated, 0, memory_order_relaxed);
    atomic_store_explicit(&pt->index_count, 0, memory_order_relaxed);
    atomic_store_explicit(&pt->last_index_pos, UINT64_MAX, memory_order_relaxed);
    atomic_store_explicit(&pt->records, 0, memory_order_relaxed);
    atomic_store_explicit(&pt->max_timestamp_ms, 0, memory_order_relaxed);
    atomic_store_explicit(&pt->seg_gen,
                          atomic_load_explicit(&pt->roll_seg_gen, memory_order_relaxed),
                          memory_order_relaxed);
    /* release: the seqlock's closing store (see pq_dlog_roll). */
    atomic_store_explicit(&pt->seq, seq + 1, memory_order_release);
}

/* What pq_dlog_lock and pq_dlog_trylock do once pq_lock_take has answered
 * rc (and died). */
static int pq_dlog_locked(pq_dlog_part *pt, int rc, int died)
{
    if (rc == 0 && died) {
        /* It may have died inside an append: the next append repairs it. */
        if (atomic_load_explicit(&pt->claim_end, memory_order_relaxed) != 0)
            atomic_store_explicit(&pt->torn, 1, memory_order_relaxed);
        rc = -pthread_mutex_consistent(&pt->lock);
        if (rc != 0) {
            pthread_mutex_unlock(&pt->lock);
            return rc;
        }
    }
    if (rc != 0)
        return rc;
    /* Only a roller that died leaves seq odd to whoever holds the lock
     * next (a roll runs whole under the lock): finish its roll. */
    pq_dlog_finish_roll(pt);
    return 0;
}

int pq_dlog_lock(pq_dlog *d, uint32_t part)
{
    if (part >= d->partitions)
        return -EINVAL;
    pq_dlog_part *pt = &d->parts[part];
    int died;
    int rc = pq_lock_take(&pt->lock, &died);
    return pq_dlog_locked(pt, rc, died);
}

int pq_dlog_trylock(pq_dlog *d, uint32_t part)
{
    if (part >= d->partitions)
        return -EINVAL;
    pq_dlog_part *pt = &d->parts[part];
    int died;
    int rc = pq_lock_acquire(&pt->lock, 0, &died);
    return rc == -EBUSY ? rc : pq_dlog_locked(pt, rc, died);
}

void pq_dlog_unlock(pq_dlog *d, uint32_t part)
{
    pthread_mutex_unlock(&d->parts[part].lock);
}

static void pq_dlog_publish(pq_dlog_part *pt, const pq_dseg_cursor *c)
{
    atomic_store_explicit(&pt->last_index_pos, c->last_index_pos, memory_order_relaxed);
    atomic_store_explicit(&pt->records, c->records, memory_order_relaxed);
    atomic_store_explicit(&pt->max_timestamp_ms, c->max_timestamp_ms, memory_order_relaxed);
    atomic_store_explicit(&pt->index_count, c->index_count, memory_order_relaxed);
    /* release: the records (and index entries) written before are
     * complete for a reader that loads end_pos with acquire. end_pos
     * before end_offset: a reader that sees an end offset also sees an
     * end position covering it. */
    atomic_store_explicit(&pt->end_pos, c->pos, memory_order_release);
    atomic_store_explicit(&pt->end_offset, c->next_offset, memory_order_release);
}

/* Redo the publication of an append whose holder died (pq_dlog_append):
 * from the cursor it saved, walk the complete records it wrote (the index
 * entries too), publish them, and zero the rest of what it may have
 * written. Every step can be redone if this holder dies as well. */
static void pq_dlog_repair_append(pq_dlog_part *pt, pq_dseg *s)
{
    pq_dseg_cursor c = {
        .pos = atomic_load_explicit(&pt->claim_pos, memory_order_relaxed),
        .next_offset = atomic_load_explicit(&pt->claim_offset, memory_order_relaxed),
        .index_count = atomic_load_explicit(&pt->claim_index_count, memory_order_relaxed),
        .last_index_pos = atomic_load_explicit(&pt->claim_last_index_pos, memory_order_relaxed),
        .records = atomic_load_explicit(&pt->claim_records, memory_order_relaxed),
        .max_timestamp_ms = atomic_load_explicit(&pt->claim_max_timestamp_ms,
                                                 memory_order_relaxed),
    };
    uint64_t end = atomic_load_explicit(&pt->claim_end, memory_order_relaxed);
    if (end > s->data_size)
        end = s->data_size;
    if (c.pos <= end && (c.pos & (PQ_DSEG_ALIGN - 1)) == 0) {
        int torn;
        pq_dseg_scan(s, end, &c, 1, &torn);
        pq_dlog_publish(pt, &c);
        memset(s->data + c.pos, 0, end - c.pos);
    }
    atomic_store_explicit(&pt->claim_end, 0, memory_order_relaxed);
    atomic_store_explicit(&pt->torn, 0, memory_order_relaxed);
}

static void pq_dlog_cursor(pq_dlog_part *pt, pq_dseg_cursor *c)
{
    /* relaxed: under the lock, which orders them with the last holder's. */
    c->pos = atomic_load_explicit(&pt->end_pos, memory_order_relaxed);
    c->next_offset = atomic_load_explicit(&pt->end_offset, memory_order_relaxed);
    c->index_count = atomic_load_explicit(&pt->index_count, memory_order_relaxed);
    c->last_index_pos = atomic_load_explicit(&pt->last_index_pos, memory_order_relaxed);
    c->records = atomic_load_explicit(&pt->records, memory_order_relaxed);
    c->max_timestamp_ms = atomic_load_explicit(&pt->max_timestamp_ms, memory_order_relaxed);
}

int pq_dlog_set_allocated(pq_dlog *d, uint32_t part, uint64_t allocated)
{
    if (part >= d->partitions || allocated > d->segment_bytes)
        return -EINVAL;
    atomic_store_explicit(&d->parts[part].allocated, allocated, memory_order_relaxed);
    return 0;
}

uint64_t pq_dlog_allocated(pq_dlog *d, uint32_t part)
{
    if (part >= d->partitions)
        return 0;
    return atomic_load_explicit(&d->parts[part].allocated, memory_order_relaxed);
}

int pq_dlog_append(pq_dlog *d, uint32_t part, pq_dseg *s, const pq_log_entry *e, uint32_t n,
                   uint64_t ts, uint64_t *first_offset, uint64_t *need)
{
    if (part >= d->partitions || s == NULL || s->data == NULL || n == 0 || e == NULL ||
        s->data_size > d->segment_bytes)
        return -EINVAL;
    pq_dlog_part *pt = &d->parts[part];
    if (atomic_load_explicit(&pt->active_base, memory_order_relaxed) != s->base_offset)
        return -ESTALE;
    if (atomic_load_explicit(&pt->torn, memory_order_relaxed))
        pq_dlog_repair_append(pt, s);
    /* A roller that died between its seal and its switch sealed the active
     * segment: it is not closed after all. */
    if (s->ix != NULL && s->ix->sealed != 0)
        s->ix->sealed = 0;
    pq_dseg_cursor c;
    pq_dlog_cursor(pt, &c);
    if (c.pos > s->data_size)
        return PQ_ERR_CORRUPT;
    /* Disk blocks for what will be written (the file is sparse past them). */
    uint64_t end = c.pos;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t kl = e[i].key == NULL ? 0 : e[i].key_len;
        uint64_t size = pq_dseg_record_size(kl, e[i].headers_len, e[i].value_len);
        if (size > s->data_size - end)
            break;
        end += size;
    }
    if (end > atomic_load_explicit(&pt->allocated, memory_order_relaxed)) {
        if (need)
            *need = end;
        return -ENOBUFS;
    }
    /* Save the cursor, then announce how far this append may write: if we
     * die, the next holder redoes the publication (pq_dlog_repair_append).
     * claim_end last: until it is set, nothing is to be repaired. */
    atomic_store_explicit(&pt->claim_pos, c.pos, memory_order_relaxed);
    atomic_store_explicit(&pt->claim_offset, c.next_offset, memory_order_relaxed);
    atomic_store_explicit(&pt->claim_index_count, c.index_count, memory_order_relaxed);
    atomic_store_explicit(&pt->claim_last_index_pos, c.last_index_pos, memory_order_relaxed);
    atomic_store_explicit(&pt->claim_records, c.records, memory_order_relaxed);
    atomic_store_explicit(&pt->claim_max_timestamp_ms, c.max_timestamp_ms,
                          memory_order_relaxed);
    atomic_store_explicit(&pt->claim_end, end, memory_order_relaxed);
    *first_offset = c.next_offset;
    int k = pq_dseg_write(s, &c, e, n, ts);
    if (k > 0)
        pq_dlog_publish(pt, &c);
    atomic_store_explicit(&pt->claim_end, 0, memory_order_relaxed);
    return k;
}

int pq_dlog_roll(pq_dlog *d, uint32_t part, pq_dseg *s, uint64_t *new_base)
{
    if (part >= d->partitions || s == NULL || new_base == NULL)
        return -EINVAL;
    pq_dlog_part *pt = &d->parts[part];
    if (atomic_load_explicit(&pt->active_base, memory_order_relaxed) != s->base_offset)
        return -ESTALE;
    /* (tests: killed here, the next segment's files exist past the
     * published end while the control still names the old one active) */
    PQ_FAULT_POINT(PQ_FAULT_ROLL_BEGIN);
    if (atomic_load_explicit(&pt->torn, memory_order_relaxed))
        pq_dlog_repair_append(pt, s); /* before its cursor is sealed */
    pq_dseg_cursor c;
    pq_dlog_cursor(pt, &c);
    if (c.pos == 0)
        return -EINVAL; /* an empty segment has nothing to close */
    if (s->ix != NULL)
        pq_dseg_index_seal(s, &c);
    atomic_store_explicit(&pt->roll_closed_bytes,
                          atomic_load_explicit(&pt->closed_bytes, memory_order_relaxed) + c.pos,
                          memory_order_relaxed);
    atomic_store_explicit(&pt->roll_seg_gen,
                          atomic_load_explicit(&pt->seg_gen, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    /* The seqlock: seq odd, then (release fence) the stores; a reader that
     * read any of them sees seq odd or changed when it checks again. */
    uint64_t seq = atomic_load_explicit(&pt->seq, memory_order_relaxed);
    atomic_store_explicit(&pt->seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    /* (tests: killed here, the next holder of the lock finishes the roll) */
    PQ_FAULT_POINT(PQ_FAULT_MID_ROLL);
    pq_dlog_finish_roll(pt);
    *new_base = c.next_offset;
    return 0;
}

int pq_dlog_set_start(pq_dlog *d, uint32_t part, uint64_t start_offset, uint64_t removed_bytes)
{
    if (part >= d->partitions)
        return -EINVAL;
    pq_dlog_part *pt = &d->parts[part];
    uint64_t closed = atomic_load_explicit(&pt->closed_bytes, memory_order_relaxed);
    if (start_offset > atomic_load_explicit(&pt->active_base, memory_order_relaxed) ||
        start_offset < atomic_load_explicit(&pt->start_offset, memory_order_relaxed))
        return -EINVAL;
    /* The byte count first: a holder that dies between the two leaves it
     * low, and retention then removes too little, never too much. */
    atomic_store_explicit(&pt->closed_bytes, removed_bytes > closed ? 0 : closed - removed_bytes,
                          memory_order_relaxed);
    /* release: a reader that sees the new start (acquire) and then finds
     * a file gone knows why. */
    atomic_store_explicit(&pt->start_offset, start_offset, memory_order_release);
    atomic_fetch_add_explicit(&pt->seg_gen, 1, memory_order_release);
    return 0;
}

int pq_dlog_snapshot(pq_dlog *d, uint32_t part, pq_dlog_view *v)
{
    if (part >= d->partitions || v == NULL)
        return -EINVAL;
    pq_dlog_part *pt = &d->parts[part];
    for (int attempt = 0;; attempt++) {
        uint64_t s1 = atomic_load_explicit(&pt->seq, memory_order_acquire);
        if ((s1 & 1) == 0) {
            v->start_offset = atomic_load_explicit(&pt->start_offset, memory_order_acquire);
            v->active_base = atomic_load_explicit(&pt->active_base, memory_order_relaxed);
            /* end_offset before end_pos (acquire both): see pq_dlog_append. */
            v->end_offset = atomic_load_explicit(&pt->end_offset, memory_order_acquire);
            v->end_pos = atomic_load_explicit(&pt->end_pos, memory_order_acquire);
            v->index_count = atomic_load_explicit(&pt->index_count, memory_order_relaxed);
            v->seg_gen = atomic_load_explicit(&pt->seg_gen, memory_order_relaxed);
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&pt->seq, memory_order_relaxed) == s1) {
                if (v->start_offset > v->end_offset)
                    v->start_offset = v->end_offset;
                return 0;
            }
        }
        if (attempt == PQ_DLOG_SNAPSHOT_TRIES) {
            /* A roller that died leaves seq odd until the next holder of
             * the lock finishes its roll: be that holder. */
            int rc = pq_dlog_lock(d, part);
            if (rc < 0)
                return rc;
            pq_dlog_unlock(d, part);
            attempt = 0;
        }
        pq_cpu_relax();
    }
}

int pq_dlog_active_stats(pq_dlog *d, uint32_t part, uint64_t *max_ts, uint64_t *records,
                         uint64_t *closed_bytes)
{
    if (part >= d->partitions)
        return -EINVAL;
    pq_dlog_part *pt = &d->parts[part];
    if (max_ts)
        *max_ts = atomic_load_explicit(&pt->max_timestamp_ms, memory_order_relaxed);
    if (records)
        *records = atomic_load_explicit(&pt->records, memory_order_relaxed);
    if (closed_bytes)
        *closed_bytes = atomic_load_explicit(&pt->closed_bytes, memory_order_relaxed);
    return 0;
}

void pq_dlog_notify(pq_dlog *d, uint32_t part)
{
    pq_event_notify(&d->parts[part].readable, INT32_MAX);
    pq_event_notify(&d->shared->appended, INT32_MAX);
}

/* Is there something for a reader at offset: a record, or a range error? */
static int pq_dlog_ready_at(pq_dlog *d, uint32_t part, uint64_t offset)
{
    pq_dlog_part *pt = &d->parts[part];
    return atomic_load_explicit(&pt->end_offset, memory_order_acquire) > offset ||
           atomic_load_explicit(&pt->start_offset, memory_order_acquire) > offset;
}

struct pq_dlog_rwait {
    pq_dlog *d;
    const uint32_t *parts;
    const uint64_t *offsets;
    uint32_t n;
    const _Atomic uint64_t *gen;
    uint64_t gen_seen;
};

static int pq_dlog_any_ready(void *arg)
{
    struct pq_dlog_rwait *w = arg;
    /* Shut down: ready, so that a waiter never parks past the wake. */
    if (pq_shutdown_seen(w->d->hdr))
        return 1;
    if (w->gen != NULL && atomic_load_explicit(w->gen, memory_order_acquire) != w->gen_seen)
        return 1;
    for (uint32_t i = 0; i < w->n; i++)
        if (w->parts[i] < w->d->partitions && pq_dlog_ready_at(w->d, w->parts[i], w->offsets[i]))
            return 1;
    return 0;
}

int pq_dlog_wait(pq_dlog *d, uint32_t part, uint64_t offset, int64_t deadline_ns,
                 uint32_t spin_ns)
{
    if (part >= d->partitions)
        return -EINVAL;
    struct pq_dlog_rwait w = {d, &part, &offset, 1, NULL, 0};
    return pq_event_wait_until(&d->parts[part].readable, pq_dlog_any_ready, &w, spin_ns,
                               deadline_ns);
}

int pq_dlog_wait_any(pq_dlog *d, const uint32_t *parts, const uint64_t *offsets, uint32_t n,
                     const _Atomic uint64_t *gen, uint64_t gen_seen, int64_t deadline_ns,
                     uint32_t spin_ns)
{
    if (n > 0 && (parts == NULL || offsets == NULL))
        return -EINVAL;
    struct pq_dlog_rwait w = {d, parts, offsets, n, gen, gen_seen};
    return pq_event_wait_until(&d->shared->appended, pq_dlog_any_ready, &w, spin_ns,
                               deadline_ns);
}

int pq_dlog_shutdown(pq_dlog *d, uint32_t how)
{
    int before = pq_shutdown_set(d->hdr, how);
    if (before < 0)
        return before;
    /* After the flag (pq_shutdown.h): every parked reader and poller, in
     * every process, returns and sees it (bounded by the partitions). */
    for (uint32_t p = 0; p < d->partitions; p++)
        pq_event_wake_all(&d->parts[p].readable);
    pq_event_wake_all(&d->shared->appended);
    return before;
}

int pq_dlog_sync_due(pq_dlog *d, uint32_t part, int64_t interval_ns)
{
    if (part >= d->partitions)
        return -EINVAL;
    pq_dlog_part *pt = &d->parts[part];
    int64_t now = pq_monotonic_ns();
    /* relaxed: under the lock. */
    if (now - atomic_load_explicit(&pt->last_sync_ns, memory_order_relaxed) < interval_ns)
        return 0;
    atomic_store_explicit(&pt->last_sync_ns, now, memory_order_relaxed);
    return 1;
}
