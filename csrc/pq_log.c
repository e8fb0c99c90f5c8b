/* pq_log.c - the partitioned ring log behind pyqueue.Log (memory mode).
 * See pq_log.h and docs/design.md ("Log (memory mode)"). */
#define _GNU_SOURCE
#include "pq_log_internal.h"
#include "pq_shutdown.h"

#include <string.h>

#include "pq_claim_lock.h"
#include "pq_fault.h"
#include "pq_proc.h"
#include "pq_record.h"

#define PQ_LOG_RETRIES 1000

uint64_t pq_log_index_entries(uint64_t capacity)
{
    /* The smallest record takes 48 bytes: one entry per EVERY records of
     * 32 bytes or more covers the whole ring. At least 4 (64 bytes). */
    uint64_t m = capacity / (32u * PQ_LOG_INDEX_EVERY);
    return m < 4 ? 4 : m;
}

static uint64_t pq_log_stride(uint64_t capacity)
{
    return sizeof(pq_log_part) + pq_log_index_entries(capacity) * sizeof(pq_log_index_entry) +
           capacity;
}

static int pq_log_args_ok(uint32_t partitions, uint64_t capacity)
{
    return partitions >= 1 && partitions <= PQ_LOG_MAX_PARTITIONS &&
           pq_is_power_of_two(capacity) && capacity >= PQ_LOG_MIN_CAPACITY &&
           capacity <= PQ_LOG_MAX_CAPACITY;
}

static uint64_t pq_log_groups_offset(uint32_t partitions, uint64_t capacity)
{
    return pq_align_up(PQ_LOG_PARTS_OFFSET + (uint64_t)partitions * pq_log_stride(capacity),
                       PQ_CACHE_LINE);
}

uint64_t pq_log_segment_size(uint32_t partitions, uint64_t capacity)
{
    if (!pq_log_args_ok(partitions, capacity))
        return 0;
    return pq_log_groups_offset(partitions, capacity) +
           pq_group_table_size(PQ_LOG_MAX_GROUPS, partitions);
}

int pq_log_create(void *base, size_t size, uint32_t partitions, uint64_t capacity,
                  uint64_t retention_ms, uint64_t user_flags)
{
    uint64_t params[PQ_LOG_NPARAMS] = {0};
    int rc;
    uint64_t need = pq_log_segment_size(partitions, capacity);

    if (need == 0 || size < need || ((uintptr_t)base & 63) != 0)
        return -EINVAL;
    params[PQ_LOG_PARAM_PARTITIONS] = partitions;
    params[PQ_LOG_PARAM_CAPACITY] = capacity;
    params[PQ_LOG_PARAM_INDEX_ENTRIES] = pq_log_index_entries(capacity);
    params[PQ_LOG_PARAM_MAX_GROUPS] = PQ_LOG_MAX_GROUPS;
    params[PQ_LOG_PARAM_RETENTION_MS] = retention_ms;
    params[PQ_LOG_PARAM_USER0] = user_flags;
    rc = pq_segment_init(base, size, PQ_KIND_LOG, PQ_LOG_PARTS_OFFSET,
                         need - PQ_LOG_PARTS_OFFSET, params, PQ_LOG_NPARAMS);
    if (rc < 0)
        return rc;
    pq_log_shared *sh = (pq_log_shared *)((uint8_t *)base + PQ_LOG_SHARED_OFFSET);
    memset(sh, 0, sizeof *sh);
    rc = pq_group_table_init(&sh->groups, base, pq_log_groups_offset(partitions, capacity),
                             PQ_LOG_MAX_GROUPS, partitions);
    if (rc < 0)
        return rc;
    uint64_t stride = pq_log_stride(capacity);
    for (uint32_t p = 0; p < partitions; p++) {
        pq_log_part *pt = (pq_log_part *)((uint8_t *)base + PQ_LOG_PARTS_OFFSET + p * stride);
        memset(pt, 0, sizeof *pt);
        rc = pq_claim_lock_init(&pt->claim_lock);
        if (rc < 0)
            return rc;
        /* No index entry is valid yet: UINT64_MAX matches no offset. */
        pq_log_index_entry *ix = (pq_log_index_entry *)((uint8_t *)pt + sizeof *pt);
        for (uint64_t i = 0; i < pq_log_index_entries(capacity); i++)
            atomic_store_explicit(&ix[i].offset, UINT64_MAX, memory_order_relaxed);
    }
    pq_segment_publish(base);
    return 0;
}

int pq_log_open(pq_log *l, void *base, size_t size)
{
    memset(l, 0, sizeof *l);
    if (((uintptr_t)base & 63) != 0)
        return -EINVAL;
    int rc = pq_segment_check(base, size, PQ_KIND_LOG);
    if (rc < 0)
        return rc;
    pq_segment_header *h = base;
    uint64_t parts = h->params[PQ_LOG_PARAM_PARTITIONS];
    uint64_t capacity = h->params[PQ_LOG_PARAM_CAPACITY];
    if (parts < 1 || parts > PQ_LOG_MAX_PARTITIONS || !pq_log_args_ok((uint32_t)parts, capacity) ||
        h->params[PQ_LOG_PARAM_MAX_GROUPS] != PQ_LOG_MAX_GROUPS)
        return PQ_ERR_CORRUPT;
    uint64_t need = pq_log_segment_size((uint32_t)parts, capacity);
    if (h->params[PQ_LOG_PARAM_INDEX_ENTRIES] != pq_log_index_entries(capacity) ||
        h->data_offset != PQ_LOG_PARTS_OFFSET || h->data_size != need - PQ_LOG_PARTS_OFFSET ||
        need > size)
        return PQ_ERR_TRUNCATED;
    l->hdr = h;
    l->shared = (pq_log_shared *)((uint8_t *)base + PQ_LOG_SHARED_OFFSET);
    l->parts_base = (uint8_t *)base + PQ_LOG_PARTS_OFFSET;
    l->partitions = (uint32_t)parts;
    l->capacity = capacity;
    l->mask = capacity - 1;
    l->index_entries = pq_log_index_entries(capacity);
    l->stride = pq_log_stride(capacity);
    l->max_payload = capacity / 4 - PQ_RECORD_HEADER;
    if (l->max_payload > UINT32_MAX)
        l->max_payload = UINT32_MAX & ~(uint64_t)(PQ_RECORD_ALIGN - 1);
    l->retention_ms = h->params[PQ_LOG_PARAM_RETENTION_MS];
    if (l->shared->groups.offset != pq_log_groups_offset(l->partitions, capacity))
        return PQ_ERR_CORRUPT;
    return pq_group_table_open(&l->groups, &l->shared->groups, base, need, l->partitions,
                               &l->shared->appended);
}

/*
 * A holder that died between its stores of start_offset and start_pos
 * left a start_offset ahead of start_pos: derive it again from start_pos
 * (the offset field of the first record there, written under the lock;
 * next_offset when nothing is left).
 */
static void pq_log_repair_start(pq_log *l, uint32_t part)
{
    pq_log_part *pt = pq_log_part_at(l, part);
    uint8_t *data = pq_log_data(l, part);
    uint64_t tl = atomic_load_explicit(&pt->tail, memory_order_relaxed);
    uint64_t p = atomic_load_explicit(&pt->start_pos, memory_order_relaxed);
    uint64_t so = atomic_load_explicit(&pt->next_offset, memory_order_relaxed);
    if ((tl & (PQ_RECORD_ALIGN - 1)) != 0 || tl - p > l->capacity)
        return; /* corrupt: the next claim says so */
    while (p != tl) {
        pq_record_header *rec = (pq_record_header *)(data + (p & l->mask));
        uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_relaxed);
        uint64_t size = pq_record_size(pq_ctl_len(ctl));
        if (pq_ctl_tag(ctl) != pq_record_tag(p) || size > l->capacity - (p & l->mask) ||
            size > tl - p)
            return;
        if (pq_ctl_state(ctl) != PQ_REC_PADDING) {
            if (pq_ctl_len(ctl) >= sizeof so)
                memcpy(&so, (uint8_t *)rec + PQ_RECORD_HEADER, sizeof so);
            break;
        }
        p += size;
    }
    atomic_store_explicit(&pt->start_offset, so, memory_order_relaxed);
}

int pq_log_lock(pq_log *l, uint32_t part)
{
    pq_log_part *pt = pq_log_part_at(l, part);
    const pq_claim_words w = {&pt->tail, &pt->next_offset, &pt->claim_tail, &pt->claim_msgs, NULL, 0};
    int died;
    int rc = pq_claim_lock_ex(&pt->claim_lock, &w, &died);
    if (rc == 0 && died)
        pq_log_repair_start(l, part);
    return rc;
}

/* The oldest timestamp retention keeps at now_ms (0: no age limit). */
static uint64_t pq_log_min_timestamp(const pq_log *l, uint64_t now_ms)
{
    return l->retention_ms != 0 && now_ms > l->retention_ms ? now_ms - l->retention_ms : 0;
}

/*
 * Under the claim lock, for the CLAIMED record at h (header ctl) that a
 * claim needs the space of: may its appender still write into it? 1 when
 * it is alive, or when that cannot be told (/proc unreadable: never
 * overwrite on a guess), and *wr (if not NULL) names it; 0 when it is
 * dead (exited, a zombie, its pid reused): it will write nothing more, and
 * the record is passed like an abandoned one.
 */
static int pq_log_writer_alive(pq_record_header *rec, uint64_t h, uint64_t ctl,
                               pq_log_writer *wr)
{
    int32_t pid;
    uint64_t start32;
    /* relaxed: the claim wrote it under this lock, whose acquisition
     * orders that write before this load. */
    pq_proc_unpack(atomic_load_explicit(&rec->owner, memory_order_relaxed), &pid, &start32);
    if (pq_proc_alive(pid, start32, 1) == 0)
        return 0;
    if (wr != NULL) {
        wr->pos = h;
        wr->ctl = ctl;
        wr->pid = pid;
        wr->offset = UINT64_MAX;
        if (pq_ctl_len(ctl) >= sizeof wr->offset) /* written under the lock by its claim */
            memcpy(&wr->offset, (uint8_t *)rec + PQ_RECORD_HEADER, sizeof wr->offset);
    }
    return 1;
}

/*
 * Under the claim lock: move the start (*hp, *sop) past whole oldest
 * records until a claim ending at `end` fits the ring, and then on past
 * committed records older than min_ts (and the padding and abandoned
 * records among them, which hold nothing). Stops at a record being
 * written: by age always; by size unless its appender is dead (then it
 * is passed, as an abandoned one). Each committed out-of-band record
 * passed has its reference appended to refs (if not NULL), copied before
 * anything may overwrite it. 0; -ENOBUFS: refs is full, the start stops
 * at the first record not reported (*hp, *sop say where; nothing is
 * passed unreported); PQ_ERR_LOG_WRITER: the claim needs the space of a
 * record a live appender is writing (*wr, if not NULL, names it; the
 * caller must not store the start); PQ_ERR_CORRUPT.
 */
static int pq_log_drop_oldest(pq_log *l, uint8_t *data, uint64_t *hp, uint64_t *sop,
                              uint64_t tl, uint64_t end, uint64_t min_ts, pq_refs *refs,
                              pq_log_writer *wr)
{
    uint64_t h = *hp, so = *sop;
    int rc = 0;
    /* Bounded: h only grows, by a whole record (16 bytes or more), and
     * never passes tl (checked), tl - h <= capacity. */
    for (;;) {
        int over = end - h > l->capacity;
        if (!over && (min_ts == 0 || h == tl))
            break;
        if (h == tl)
            return PQ_ERR_CORRUPT; /* over capacity with nothing left to drop */
        pq_record_header *rec = (pq_record_header *)(data + (h & l->mask));
        /* acquire: a COMMITTED record's timestamp and value (written
         * outside the lock) are visible (pairs with the commit's release). */
        uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
        uint64_t size = pq_record_size(pq_ctl_len(ctl));
        if (pq_ctl_tag(ctl) != pq_record_tag(h) || size > l->capacity - (h & l->mask) ||
            size > tl - h)
            return PQ_ERR_CORRUPT;
        uint8_t st = pq_ctl_state(ctl);
        if (!over) {
            if (st == PQ_REC_CLAIMED)
                break;
            if (st == PQ_REC_COMMITTED) {
                pq_log_rec_hdr rh;
                if (pq_ctl_len(ctl) < PQ_LOG_REC_HDR)
                    return PQ_ERR_CORRUPT;
                memcpy(&rh, (uint8_t *)rec + PQ_RECORD_HEADER, sizeof rh);
                if (rh.timestamp_ms >= min_ts)
                    break;
            }
        }
        if (st == PQ_REC_CLAIMED && pq_log_writer_alive(rec, h, ctl, wr))
            return PQ_ERR_LOG_WRITER; /* its appender writes it yet: never overwrite */
        if (st == PQ_REC_COMMITTED && (pq_ctl_type(ctl) & PQ_TYPE_OOB) && refs != NULL) {
            rc = pq_log_take_ref(rec, ctl, refs);
            if (rc < 0)
                break; /* -ENOBUFS: the start stays before this record */
        }
        if (st != PQ_REC_PADDING)
            so++;
        h += size;
    }
    *hp = h;
    *sop = so;
    return rc;
}

/*
 * Under the claim lock: move the start to (h, so) without claiming (the
 * expiry, or an append that must first report the references it drops).
 * Announced in claim_tail (readers retry while it is set,
 * pq_log_appending; the tail it names is the tail, so a holder dying here
 * needs no undo), start_offset, then start_pos with release, then the
 * announcement cleared.
 */
static void pq_log_store_start(pq_log_part *pt, uint64_t tl, uint64_t h, uint64_t so)
{
    /* release (all four): as in pq_log_append, a reader that sees the new
     * start_pos (acquire) sees start_offset, and one that sees claim_tail
     * clear after its fence sees the new start. */
    atomic_store_explicit(&pt->claim_tail, tl, memory_order_release);
    atomic_store_explicit(&pt->start_offset, so, memory_order_release);
    atomic_store_explicit(&pt->start_pos, h, memory_order_release);
    atomic_store_explicit(&pt->claim_tail, 0, memory_order_release);
}

int pq_log_append(pq_log *l, uint32_t part, const pq_log_entry *e, uint32_t n,
                  uint64_t timestamp_ms, uint64_t *first_offset)
{
    return pq_log_append_refs(l, part, e, n, timestamp_ms, first_offset, NULL);
}

int pq_log_append_refs(pq_log *l, uint32_t part, const pq_log_entry *e, uint32_t n,
                       uint64_t timestamp_ms, uint64_t *first_offset, pq_refs *refs)
{
    return pq_log_append_ex(l, part, e, n, timestamp_ms, first_offset, refs, NULL);
}

int pq_log_append_ex(pq_log *l, uint32_t part, const pq_log_entry *e, uint32_t n,
                     uint64_t timestamp_ms, uint64_t *first_offset, pq_refs *refs,
                     pq_log_writer *wr)
{
    uint64_t need = 0;
    pq_proc_id self;
    int rc;

    if (part >= l->partitions || n == 0 || e == NULL ||
        (refs != NULL && refs->count > refs->max))
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t kl = e[i].key == NULL ? 0 : e[i].key_len;
        if (kl == PQ_LOG_NO_KEY)
            return -EMSGSIZE;
        uint64_t len = pq_log_payload_len(kl, e[i].headers_len, e[i].value_len);
        if (len > l->max_payload)
            return -EMSGSIZE;
        need += pq_record_size(len);
    }
    if (n > 1 && need > l->capacity / 2)
        return -EMSGSIZE;
    rc = pq_proc_self(&self);
    if (rc < 0)
        return rc;
    const uint64_t owner = pq_proc_pack(&self);
    pq_log_part *pt = pq_log_part_at(l, part);
    uint8_t *data = pq_log_data(l, part);
    pq_log_index_entry *ix = pq_log_index(l, part);
    uint64_t pos[PQ_LOG_APPEND_MAX];
    uint64_t *posv = pos;
    if (n > PQ_LOG_APPEND_MAX)
        return -E2BIG;

    rc = pq_log_lock(l, part);
    if (rc < 0)
        return rc;
    /* relaxed: these words only change under the lock. */
    uint64_t tl = atomic_load_explicit(&pt->tail, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&pt->start_pos, memory_order_relaxed);
    uint64_t so = atomic_load_explicit(&pt->start_offset, memory_order_relaxed);
    uint64_t no = atomic_load_explicit(&pt->next_offset, memory_order_relaxed);
    if ((tl & (PQ_RECORD_ALIGN - 1)) != 0 || tl - h > l->capacity || so > no) {
        pthread_mutex_unlock(&pt->claim_lock);
        return PQ_ERR_CORRUPT;
    }
    rc = pq_log_reclaim_pending(l, part, tl, refs);
    if (rc < 0) {
        pthread_mutex_unlock(&pt->claim_lock);
        return rc;
    }
    uint64_t p = tl;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t kl = e[i].key == NULL ? 0 : e[i].key_len;
        uint64_t size = pq_record_size(pq_log_payload_len(kl, e[i].headers_len, e[i].value_len));
        uint64_t off = p & l->mask;
        if (off + size > l->capacity)
            p += l->capacity - off;
        posv[i] = p;
        p += size;
    }
    /* Retention: drop whole oldest records until the claim fits, and those
     * older than the retention time. */
    const uint32_t refs_before = refs == NULL ? 0 : refs->count;
    const uint64_t h0 = h;
    rc = pq_log_drop_oldest(l, data, &h, &so, tl, p, pq_log_min_timestamp(l, timestamp_ms),
                            refs, wr);
    if ((rc == 0 || rc == -ENOBUFS) && refs != NULL && refs->count > refs_before) {
        /* Out-of-band records among those dropped: a pending reclaim
         * (pq_refs.h), announced before the start moves past them (before
         * the unlock, so that no reader validates a read of them after
         * the caller unlinks their segments). Nothing is claimed: the
         * records stay intact until the caller comes back with
         * refs->reclaim, having unlinked their segments, and appends. */
        if (h == tl)
            so = no; /* everything dropped: the start is the end */
        pq_reclaim_start(&pt->reclaim, h0, h, refs);
        pq_log_store_start(pt, tl, h, so);
        pthread_mutex_unlock(&pt->claim_lock);
        PQ_FAULT_POINT(PQ_FAULT_RECLAIM_REPORTED); /* a fault build can stop here (tests) */
        return -ENOBUFS;
    }
    if (rc == -ENOBUFS) { /* refs full on entry: not one reported */
        pthread_mutex_unlock(&pt->claim_lock);
        return -EINVAL;
    }
    if (rc < 0) {
        if (refs != NULL)
            refs->count = refs_before; /* nothing dropped: nothing to unlink */
        pthread_mutex_unlock(&pt->claim_lock);
        return rc;
    }
    if (h == tl)
        so = no; /* everything dropped: the start is the end */
    atomic_store_explicit(&pt->claim_msgs, no, memory_order_relaxed);
    atomic_store_explicit(&pt->claim_tail, p, memory_order_release);
    /* Move the start first, then a release fence, then overwrite: a reader
     * that copied any byte written after the fence sees the new start in
     * pq_log_validate (the topic's seqlock pattern). */
    /* release: a reader that sees this start_offset (acquire) sees
     * claim_tail set (pq_log_appending). */
    atomic_store_explicit(&pt->start_offset, so, memory_order_release);
    /* release: a reader that sees this start_pos (acquire) sees its
     * start_offset too (it loads start_pos first). */
    atomic_store_explicit(&pt->start_pos, h, memory_order_release);
    atomic_thread_fence(memory_order_release);

    uint64_t q = tl;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t kl = e[i].key == NULL ? 0 : e[i].key_len;
        uint64_t len = pq_log_payload_len(kl, e[i].headers_len, e[i].value_len);
        if (posv[i] != q) {
            pq_record_header *pad = (pq_record_header *)(data + (q & l->mask));
            atomic_store_explicit(&pad->owner, 0, memory_order_relaxed);
            atomic_store_explicit(&pad->ctl,
                                  pq_record_ctl(q, (uint32_t)(posv[i] - q - PQ_RECORD_HEADER), 0,
                                                PQ_REC_PADDING),
                                  memory_order_relaxed);
        }
        pq_record_header *rec = (pq_record_header *)(data + (posv[i] & l->mask));
        atomic_store_explicit(&rec->owner, owner, memory_order_relaxed);
        atomic_store_explicit(&rec->ctl, pq_record_ctl(posv[i], (uint32_t)len, e[i].type,
                                                       PQ_REC_CLAIMED),
                              memory_order_relaxed);
        /* The offset is part of the claim: readers find records by it. */
        uint64_t off = no + i;
        memcpy((uint8_t *)rec + PQ_RECORD_HEADER, &off, sizeof off);
        if (off % PQ_LOG_INDEX_EVERY == 0) {
            pq_log_index_entry *ent = &ix[(off / PQ_LOG_INDEX_EVERY) % l->index_entries];
            atomic_store_explicit(&ent->pos, posv[i], memory_order_relaxed);
            atomic_store_explicit(&ent->offset, off, memory_order_relaxed);
        }
        q = posv[i] + pq_record_size(len);
    }
    atomic_store_explicit(&pt->next_offset, no + n, memory_order_relaxed);
    /* release: publishes headers, offsets and index entries (acquire on tail). */
    atomic_store_explicit(&pt->tail, p, memory_order_release);
    atomic_store_explicit(&pt->claim_tail, 0, memory_order_release);
    pthread_mutex_unlock(&pt->claim_lock);

    /* Copy outside the lock, then commit each record. */
    uint32_t lost = 0;
    for (uint32_t i = 0; i < n; i++) {
        pq_record_header *rec = (pq_record_header *)(data + (posv[i] & l->mask));
        uint8_t *pl = (uint8_t *)rec + PQ_RECORD_HEADER;
        pq_log_rec_hdr rh;
        rh.offset = no + i;
        rh.timestamp_ms = timestamp_ms;
        rh.key_len = e[i].key == NULL ? PQ_LOG_NO_KEY : e[i].key_len;
        rh.headers_len = e[i].headers_len;
        memcpy(pl, &rh, sizeof rh);
        uint8_t *w = pl + PQ_LOG_REC_HDR;
        if (e[i].key != NULL && e[i].key_len) {
            memcpy(w, e[i].key, e[i].key_len);
            w += e[i].key_len;
        }
        if (e[i].headers_len) {
            memcpy(w, e[i].headers, e[i].headers_len);
            w += e[i].headers_len;
        }
        if (e[i].value_len) /* a fault build can stop mid-copy (tests) */
            pq_fault_copy(w, 0, e[i].value, e[i].value_len, e[i].value_len);
        /* Commit only the claim we made: from its exact CLAIMED header.
         * Retention never passes a record whose appender is alive, but
         * one judged dead (a pid from another namespace) may have been
         * passed and its space reused: then the header is another
         * record's, and is left alone (defence in depth; its payload
         * bytes are what pq_log_writer_alive exists to protect). */
        uint64_t len = pq_log_payload_len(e[i].key == NULL ? 0 : e[i].key_len,
                                          e[i].headers_len, e[i].value_len);
        uint64_t claimed = pq_record_ctl(posv[i], (uint32_t)len, e[i].type, PQ_REC_CLAIMED);
        /* release on success: the payload is visible to whoever sees
         * COMMITTED; relaxed on failure: nothing is published then. */
        if (!atomic_compare_exchange_strong_explicit(
                &rec->ctl, &claimed,
                pq_record_ctl(posv[i], (uint32_t)len, e[i].type, PQ_REC_COMMITTED),
                memory_order_release, memory_order_relaxed))
            lost++;
    }
    pq_event_notify(&pt->readable, INT32_MAX);
    pq_event_notify(&l->shared->appended, INT32_MAX);
    if (first_offset)
        *first_offset = no;
    return lost ? -ESTALE : 0;
}

/* Has the start moved past pos since we looked (or is it moving)? */
static int pq_log_start_passed(pq_log_part *pt, uint64_t pos)
{
    atomic_thread_fence(memory_order_acquire);
    return (int64_t)(atomic_load_explicit(&pt->start_pos, memory_order_relaxed) - pos) > 0;
}

/*
 * Is an append moving the start right now? Its start_offset store comes
 * before its start_pos store, so a reader can hold the old start_pos with
 * the new start_offset while start_pos has not moved yet: counting from
 * that pair finds the wrong record, which is not damage. The append
 * announces itself in claim_tail (release) before it stores the start and
 * clears it (release) after: seen set, the reader retries; seen clear
 * (acquire), the new start_pos is visible to the loads after it, so the
 * reader asks this *before* pq_log_start_passed. (The other order was a
 * race: start_pos read old, then the appender stored it and cleared
 * claim_tail, then claim_tail read clear: a lapped reader was told the
 * log was corrupt, about once in 40 runs of test_log's lapped reader with
 * a second run beside it.) A claim_tail left by a dead appender makes
 * readers retry until the next locker repairs it.
 */
static int pq_log_appending(pq_log_part *pt)
{
    return atomic_load_explicit(&pt->claim_tail, memory_order_acquire) != 0;
}

/*
 * Walk [p, tl) from the record whose offset is o (its first non-padding
 * record) to the one with `offset`, counting: offsets are dense, so the
 * record-offset fields are not trusted on the way (one damaged field must
 * not make the others unreachable). Bounded by the ring: p only grows, by
 * at least PQ_RECORD_HEADER, and never past tl (tl - h <= capacity), so at
 * most capacity / 16 steps. 0 and *pos_out; -EINPROGRESS: offset is at or
 * past what tail covers; -ESTALE: a header that does not fit.
 */
static int pq_log_walk(pq_log *l, uint8_t *data, uint64_t p, uint64_t o, uint64_t offset,
                       uint64_t tl, uint64_t *pos_out)
{
    while (p != tl) {
        uint64_t off = p & l->mask;
        pq_record_header *rec = (pq_record_header *)(data + off);
        /* acquire: the header (and the offset field) of a record below
         * tail are published (pairs with the claim's release on tail). */
        uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
        uint64_t size = pq_record_size(pq_ctl_len(ctl));
        if (pq_ctl_tag(ctl) != pq_record_tag(p) || size > l->capacity - off || size > tl - p)
            return -ESTALE;
        if (pq_ctl_state(ctl) != PQ_REC_PADDING) {
            if (o == offset) {
                *pos_out = p;
                return 0;
            }
            o++;
        }
        p += size;
    }
    return -EINPROGRESS;
}

/* The offset field of the (non-padding) record at p equals offset. */
static int pq_log_offset_at(pq_log *l, uint8_t *data, uint64_t p, uint64_t offset)
{
    pq_record_header *rec = (pq_record_header *)(data + (p & l->mask));
    /* acquire: as in pq_log_walk, the offset field below tail is published. */
    uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
    uint64_t ro;
    if (pq_ctl_len(ctl) < PQ_LOG_REC_HDR)
        return 0;
    memcpy(&ro, (uint8_t *)rec + PQ_RECORD_HEADER, sizeof ro);
    return ro == offset;
}

/*
 * Find the position of the record with `offset` among [h, tl), where h
 * holds offset so: by counting from the sparse index entry at or below
 * it when that entry is valid, else (or when that finds a record whose
 * offset field disagrees) from h; at most two bounded walks. The record
 * found must carry `offset` in its own offset field. 0 and *pos_out;
 * -EINPROGRESS: not published yet (offset at or past what tail covers);
 * -ESTALE: an inconsistency (overwritten meanwhile, or corrupt: the
 * caller decides by the start).
 */
static int pq_log_find(pq_log *l, uint32_t part, uint64_t offset, uint64_t h, uint64_t so,
                       uint64_t tl, uint64_t *pos_out)
{
    uint8_t *data = pq_log_data(l, part);
    uint64_t k = offset / PQ_LOG_INDEX_EVERY * PQ_LOG_INDEX_EVERY;
    pq_log_index_entry *ent = &pq_log_index(l, part)[(k / PQ_LOG_INDEX_EVERY) % l->index_entries];
    uint64_t eo = atomic_load_explicit(&ent->offset, memory_order_relaxed);
    uint64_t ep = atomic_load_explicit(&ent->pos, memory_order_relaxed);
    uint64_t p;
    int rc;
    if (offset < so)
        return -ESTALE;
    if (eo == k && k >= so && (int64_t)(ep - h) >= 0 && ep - h < tl - h &&
        (ep & (PQ_RECORD_ALIGN - 1)) == 0) {
        rc = pq_log_walk(l, data, ep, k, offset, tl, &p);
        if (rc == 0 && pq_log_offset_at(l, data, p, offset)) {
            *pos_out = p;
            return 0;
        }
        /* A stale or damaged index entry (or damage after it): count
         * from h once, which also tells a record not yet published from
         * an entry that points too far. */
    }
    rc = pq_log_walk(l, data, h, so, offset, tl, &p);
    if (rc < 0)
        return rc;
    if (!pq_log_offset_at(l, data, p, offset))
        return -ESTALE;
    *pos_out = p;
    return 0;
}

int pq_log_peek(pq_log *l, uint32_t part, uint64_t offset, pq_log_record *out, uint32_t max,
                pq_log_batch *b)
{
    if (part >= l->partitions || b == NULL || (max > 0 && out == NULL))
        return -EINVAL;
    pq_log_part *pt = pq_log_part_at(l, part);
    uint8_t *data = pq_log_data(l, part);
    for (int attempt = 0; attempt < PQ_LOG_RETRIES; attempt++) {
        /* start_pos first (acquire), then start_offset: never an old
         * start_offset with a newer start_pos, so an offset at or above
         * start_offset lies at or after h. */
        uint64_t h = atomic_load_explicit(&pt->start_pos, memory_order_acquire);
        uint64_t so = atomic_load_explicit(&pt->start_offset, memory_order_acquire);
        /* acquire on tail: headers, offsets and index entries below it. */
        uint64_t tl = atomic_load_explicit(&pt->tail, memory_order_acquire);
        uint64_t end = atomic_load_explicit(&pt->next_offset, memory_order_acquire);
        b->first_pos = h;
        b->next_offset = offset;
        b->count = 0;
        b->skipped = 0;
        if (offset < so || offset > end)
            return PQ_ERR_OFFSET_RANGE;
        if (offset == end)
            return -EAGAIN;
        if (tl - h > l->capacity || (h & (PQ_RECORD_ALIGN - 1)) != 0) {
            /* pq_log_appending first: see there why the order matters. */
            if (pq_log_appending(pt) || pq_log_start_passed(pt, h) ||
                atomic_load_explicit(&pt->tail, memory_order_relaxed) != tl)
                continue;
            return PQ_ERR_CORRUPT;
        }
        uint64_t p;
        int rc = pq_log_find(l, part, offset, h, so, tl, &p);
        if (rc == -EINPROGRESS)
            return -EINPROGRESS;
        if (rc < 0)
            goto stale;
        b->first_pos = p;
        uint64_t expect = offset;
        int bad = 0; /* the batch ends at an inconsistent record */
        while (p != tl && b->count < max) {
            uint64_t off = p & l->mask;
            pq_record_header *rec = (pq_record_header *)(data + off);
            uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
            uint64_t len = pq_ctl_len(ctl);
            uint64_t size = pq_record_size(len);
            if (pq_ctl_tag(ctl) != pq_record_tag(p) || size > l->capacity - off || size > tl - p) {
                bad = 1;
                break;
            }
            uint8_t st = pq_ctl_state(ctl);
            if (st == PQ_REC_CLAIMED)
                break;
            if (st != PQ_REC_PADDING) {
                pq_log_rec_hdr rh;
                const uint8_t *pl = (const uint8_t *)rec + PQ_RECORD_HEADER;
                if (len < PQ_LOG_REC_HDR) {
                    bad = 1;
                    break;
                }
                memcpy(&rh.offset, pl, sizeof rh.offset);
                if (rh.offset != expect) {
                    bad = 1;
                    break;
                }
                if (st == PQ_REC_COMMITTED) {
                    memcpy(&rh, pl, sizeof rh);
                    uint64_t kl = rh.key_len == PQ_LOG_NO_KEY ? 0 : rh.key_len;
                    if (kl + rh.headers_len > len - PQ_LOG_REC_HDR) {
                        bad = 1;
                        break;
                    }
                    pq_log_record *r = &out[b->count++];
                    r->offset = rh.offset;
                    r->timestamp_ms = rh.timestamp_ms;
                    r->key = rh.key_len == PQ_LOG_NO_KEY ? NULL : pl + PQ_LOG_REC_HDR;
                    r->key_len = (uint32_t)kl;
                    r->headers = pl + PQ_LOG_REC_HDR + kl;
                    r->headers_len = rh.headers_len;
                    r->value = r->headers + rh.headers_len;
                    r->value_len = (uint32_t)(len - PQ_LOG_REC_HDR - kl - rh.headers_len);
                    r->type = pq_ctl_type(ctl);
                } else if (st == PQ_REC_ABANDONED) {
                    b->skipped++;
                } else {
                    bad = 1;
                    break;
                }
                expect++;
            }
            p += size;
        }
        /* The records before an inconsistent one are returned (validate
         * says whether they were overwritten); the next peek, at it, says
         * what it is: retry or corrupt. */
        if (bad && b->count == 0 && b->skipped == 0)
            goto stale;
        b->next_offset = expect;
        if (b->count == 0 && b->skipped == 0)
            return -EINPROGRESS;
        return (int)b->count;
    stale:
        /* An appender dropped and overwrote what we looked at (the start
         * says so: retry, and offset may now be out of range), or the
         * segment is corrupt. */
        if (pq_log_appending(pt) || pq_log_start_passed(pt, h) ||
            atomic_load_explicit(&pt->start_offset, memory_order_relaxed) != so)
            continue;
        return PQ_ERR_CORRUPT;
    }
    return -EAGAIN;
}

int pq_log_validate(pq_log *l, uint32_t part, const pq_log_batch *b)
{
    if (part >= l->partitions)
        return -EINVAL;
    return pq_log_start_passed(pq_log_part_at(l, part), b->first_pos) ? -ESTALE : 0;
}

struct pq_log_rwait {
    pq_log *l;
    uint32_t part;
    uint64_t offset;
};

static int pq_log_ready(void *arg)
{
    struct pq_log_rwait *w = arg;
    pq_log_part *pt = pq_log_part_at(w->l, w->part);
    uint64_t end = atomic_load_explicit(&pt->next_offset, memory_order_acquire);
    if (w->offset == end)
        return pq_shutdown_seen(w->l->hdr) != 0; /* at the end: ready once shut down */
    if (w->offset > end)
        return 1;
    pq_log_record r;
    pq_log_batch b;
    return pq_log_peek(w->l, w->part, w->offset, &r, 1, &b) != -EINPROGRESS;
}

int pq_log_wait(pq_log *l, uint32_t part, uint64_t offset, int64_t deadline_ns, uint32_t spin_ns)
{
    if (part >= l->partitions)
        return -EINVAL;
    struct pq_log_rwait w = {l, part, offset};
    return pq_event_wait_until(&pq_log_part_at(l, part)->readable, pq_log_ready, &w, spin_ns,
                               deadline_ns);
}

struct pq_log_wwait {
    pq_log *l;
    uint32_t part;
    const pq_log_writer *wr;
};

static int pq_log_writer_done(void *arg)
{
    struct pq_log_wwait *w = arg;
    pq_log_part *pt = pq_log_part_at(w->l, w->part);
    pq_record_header *rec =
        (pq_record_header *)(pq_log_data(w->l, w->part) + (w->wr->pos & w->l->mask));
    /* relaxed: only a hint to append again, which looks under the lock. */
    return atomic_load_explicit(&rec->ctl, memory_order_relaxed) != w->wr->ctl ||
           pq_log_start_passed(pt, w->wr->pos) || pq_shutdown_seen(w->l->hdr) != 0;
}

int pq_log_wait_writer(pq_log *l, uint32_t part, const pq_log_writer *wr, int64_t deadline_ns)
{
    if (part >= l->partitions || wr == NULL)
        return -EINVAL;
    struct pq_log_wwait w = {l, part, wr};
    /* Every commit and every repair notifies the partition's event after
     * its header store, so the check above sees the change. */
    return pq_event_wait_until(&pq_log_part_at(l, part)->readable, pq_log_writer_done, &w, 0,
                               deadline_ns);
}

int pq_log_repair(pq_log *l, uint32_t part, uint64_t offset)
{
    if (part >= l->partitions)
        return -EINVAL;
    pq_log_part *pt = pq_log_part_at(l, part);
    uint64_t h = atomic_load_explicit(&pt->start_pos, memory_order_acquire);
    uint64_t so = atomic_load_explicit(&pt->start_offset, memory_order_acquire);
    uint64_t tl = atomic_load_explicit(&pt->tail, memory_order_acquire);
    uint64_t p;
    if (offset < so || tl - h > l->capacity || pq_log_find(l, part, offset, h, so, tl, &p) != 0)
        return 0;
    pq_record_header *rec = (pq_record_header *)(pq_log_data(l, part) + (p & l->mask));
    uint64_t ctl = atomic_load_explicit(&rec->ctl, memory_order_acquire);
    if (pq_ctl_tag(ctl) != pq_record_tag(p) || pq_ctl_state(ctl) != PQ_REC_CLAIMED)
        return 0;
    int32_t pid;
    uint64_t start32;
    pq_proc_unpack(atomic_load_explicit(&rec->owner, memory_order_relaxed), &pid, &start32);
    int alive = pq_proc_alive(pid, start32, 1);
    if (alive != 0)
        return alive < 0 ? alive : 0;
    if (pq_log_start_passed(pt, p))
        return 0;
    uint64_t abandoned = pq_record_ctl(p, pq_ctl_len(ctl), pq_ctl_type(ctl), PQ_REC_ABANDONED);
    if (!atomic_compare_exchange_strong_explicit(&rec->ctl, &ctl, abandoned, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return 0;
    pq_event_notify(&pt->readable, INT32_MAX);
    pq_event_notify(&l->shared->appended, INT32_MAX);
    return 1;
}

int pq_log_expire(pq_log *l, uint32_t part, uint64_t now_ms)
{
    return pq_log_expire_refs(l, part, now_ms, NULL);
}

int pq_log_expire_refs(pq_log *l, uint32_t part, uint64_t now_ms, pq_refs *refs)
{
    if (part >= l->partitions || (refs != NULL && refs->count > refs->max))
        return -EINVAL;
    uint64_t min_ts = pq_log_min_timestamp(l, now_ms);
    if (min_ts == 0)
        return 0;
    pq_log_part *pt = pq_log_part_at(l, part);
    const uint32_t refs_before = refs == NULL ? 0 : refs->count;
    int rc = pq_log_lock(l, part);
    if (rc < 0)
        return rc;
    /* relaxed: these words only change under the lock. */
    uint64_t tl = atomic_load_explicit(&pt->tail, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&pt->start_pos, memory_order_relaxed);
    uint64_t so = atomic_load_explicit(&pt->start_offset, memory_order_relaxed);
    const uint64_t so0 = so, h0 = h;
    if ((tl & (PQ_RECORD_ALIGN - 1)) != 0 || tl - h > l->capacity) {
        rc = PQ_ERR_CORRUPT;
    } else {
        rc = pq_log_reclaim_pending(l, part, tl, refs);
        if (rc == -ENOBUFS) { /* a pending reclaim reported: nothing dropped now */
            pthread_mutex_unlock(&pt->claim_lock);
            return 0;
        }
        if (rc == 0)
            rc = pq_log_drop_oldest(l, pq_log_data(l, part), &h, &so, tl, tl, min_ts, refs,
                                    NULL);
    }
    if (rc == -ENOBUFS)
        rc = 0; /* what was reported is dropped; refs is full: call again */
    if (rc < 0 && refs != NULL)
        refs->count = refs_before; /* nothing dropped: nothing to unlink */
    if (rc == 0 && so != so0) {
        if (h == tl)
            so = atomic_load_explicit(&pt->next_offset, memory_order_relaxed);
        /* Out-of-band records among those dropped: a pending reclaim,
         * announced before the start moves past them (as in an append). */
        if (refs != NULL && refs->count > refs_before)
            pq_reclaim_start(&pt->reclaim, h0, h, refs);
        pq_log_store_start(pt, tl, h, so);
    }
    pthread_mutex_unlock(&pt->claim_lock);
    return rc < 0 ? rc : (int)(so - so0);
}

struct pq_log_any_wait {
    pq_log *l;
    const uint32_t *parts;
    const uint64_t *offsets;
    uint32_t n;
    const _Atomic uint64_t *gen;
    uint64_t gen_seen;
};

static int pq_log_any_ready(void *arg)
{
    struct pq_log_any_wait *w = arg;
    if (pq_shutdown_seen(w->l->hdr))
        return 1;
    if (w->gen != NULL && atomic_load_explicit(w->gen, memory_order_acquire) != w->gen_seen)
        return 1;
    for (uint32_t i = 0; i < w->n; i++) {
        if (w->parts[i] >= w->l->partitions)
            continue;
        struct pq_log_rwait one = {w->l, w->parts[i], w->offsets[i]};
        if (pq_log_ready(&one))
            return 1;
    }
    return 0;
}

int pq_log_wait_any(pq_log *l, const uint32_t *parts, const uint64_t *offsets, uint32_t n,
                    const _Atomic uint64_t *gen, uint64_t gen_seen, int64_t deadline_ns,
                    uint32_t spin_ns)
{
    if (n > 0 && (parts == NULL || offsets == NULL))
        return -EINVAL;
    struct pq_log_any_wait w = {l, parts, offsets, n, gen, gen_seen};
    return pq_event_wait_until(&l->shared->appended, pq_log_any_ready, &w, spin_ns, deadline_ns);
}

int pq_log_shutdown(pq_log *l, uint32_t how)
{
    int before = pq_shutdown_set(l->hdr, how);
    if (before < 0)
        return before;
    /* After the flag (pq_shutdown.h): readers and pollers parked on any
     * partition, in every process, return and see it (bounded: the
     * partition count was validated at open). */
    for (uint32_t p = 0; p < l->partitions; p++)
        pq_event_wake_all(&pq_log_part_at(l, p)->readable);
    pq_event_wake_all(&l->shared->appended);
    return before;
}

int pq_log_bounds(pq_log *l, uint32_t part, uint64_t *start, uint64_t *end)
{
    if (part >= l->partitions)
        return -EINVAL;
    pq_log_part *pt = pq_log_part_at(l, part);
    /* start first: the end read after it is never below it. */
    uint64_t s = atomic_load_explicit(&pt->start_offset, memory_order_acquire);
    uint64_t e = atomic_load_explicit(&pt->next_offset, memory_order_acquire);
    if (start)
        *start = s;
    if (end)
        *end = e < s ? s : e;
    return 0;
}
