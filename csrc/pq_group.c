/* pq_group.c - consumer groups: membership, sticky assignment, fenced
 * commits. See pq_group.h and docs/design.md ("Consumer groups"). */
#define _GNU_SOURCE
#include "pq_group.h"

#include <string.h>
#include <time.h>

#include "pq_claim_lock.h"
#include "pq_proc.h"
#include "pq_segment.h"

/* Member ids carry their slot in the low byte: ((counter << 8) | slot). The
 * counter is never reset, not even when the group slot is reused, so an id
 * names one member of one group slot for good. */
#define PQ_GROUP_SLOT_BITS 8

static uint64_t pq_group_stride(uint32_t partitions)
{
    return pq_align_up(sizeof(pq_group) + (uint64_t)partitions * sizeof(pq_group_part),
                       PQ_CACHE_LINE);
}

uint64_t pq_group_table_size(uint32_t max_groups, uint32_t partitions)
{
    if (max_groups < 1 || max_groups > PQ_GROUP_MAX_GROUPS || partitions < 1 ||
        partitions > 65536)
        return 0;
    return (uint64_t)max_groups * pq_group_stride(partitions);
}

static inline pq_group *pq_group_at(pq_group_table *t, uint32_t g)
{
    return (pq_group *)(t->groups + (uint64_t)g * t->stride);
}

int pq_group_table_init(pq_group_table_hdr *hdr, void *seg_base, uint64_t offset,
                        uint32_t max_groups, uint32_t partitions)
{
    uint64_t size = pq_group_table_size(max_groups, partitions);
    if (hdr == NULL || seg_base == NULL || size == 0 || (offset & (PQ_CACHE_LINE - 1)) != 0)
        return -EINVAL;
    memset(hdr, 0, sizeof *hdr);
    int rc = pq_claim_lock_init(&hdr->lock);
    if (rc < 0)
        return rc;
    hdr->max_groups = max_groups;
    hdr->partitions = partitions;
    hdr->offset = offset;
    hdr->stride = pq_group_stride(partitions);
    /* Every group's lock, once: a process may be waiting on the lock of a
     * group that another one deletes and a third makes anew in its slot. */
    for (uint32_t g = 0; g < max_groups; g++) {
        pq_group *grp = (pq_group *)((uint8_t *)seg_base + offset + g * hdr->stride);
        rc = pq_claim_lock_init(&grp->lock);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int pq_group_table_open(pq_group_table *t, pq_group_table_hdr *hdr, void *seg_base,
                        uint64_t seg_size, uint32_t partitions, pq_event *wake)
{
    memset(t, 0, sizeof *t);
    uint64_t size = pq_group_table_size(hdr->max_groups, hdr->partitions);
    if (size == 0 || hdr->partitions != partitions ||
        hdr->stride != pq_group_stride(partitions) || (hdr->offset & (PQ_CACHE_LINE - 1)) != 0)
        return PQ_ERR_CORRUPT;
    if (hdr->offset > seg_size || size > seg_size - hdr->offset)
        return PQ_ERR_TRUNCATED;
    t->hdr = hdr;
    t->groups = (uint8_t *)seg_base + hdr->offset;
    t->max_groups = hdr->max_groups;
    t->partitions = partitions;
    t->stride = hdr->stride;
    t->wake = wake;
    return 0;
}

/* The table lock: a holder that died left at most a group without a name
 * (free) or one half reset, which the next create resets again. */
static int pq_group_table_lock(pq_group_table *t)
{
    int died;
    int rc = pq_lock_take(&t->hdr->lock, &died);
    if (rc == 0 && died)
        rc = -pthread_mutex_consistent(&t->hdr->lock);
    return rc;
}

static int pq_group_name_ok(const char *name)
{
    if (name == NULL)
        return 0;
    size_t n = strnlen(name, PQ_GROUP_NAME_MAX);
    return n >= 1 && n < PQ_GROUP_NAME_MAX;
}

static void pq_group_reset(pq_group_table *t, pq_group *grp)
{
    for (uint32_t i = 0; i < PQ_GROUP_MEMBERS; i++) {
        atomic_store_explicit(&grp->members[i].owner, 0, memory_order_relaxed);
        atomic_store_explicit(&grp->members[i].member_id, 0, memory_order_relaxed);
    }
    for (uint32_t p = 0; p < t->partitions; p++) {
        atomic_store_explicit(&grp->parts[p].committed, PQ_GROUP_NO_OFFSET, memory_order_relaxed);
        atomic_store_explicit(&grp->parts[p].owner_id, 0, memory_order_relaxed);
        atomic_store_explicit(&grp->parts[p].epoch, 0, memory_order_relaxed);
        atomic_store_explicit(&grp->parts[p].committed_ms, 0, memory_order_relaxed);
    }
}

static int pq_group_lock(pq_group_table *t, pq_group *grp);

int pq_group_find(pq_group_table *t, const char *name, int create, uint64_t *incarnation)
{
    if (!pq_group_name_ok(name))
        return -EINVAL;
    int rc = pq_group_table_lock(t);
    if (rc < 0)
        return rc;
    int free_slot = -1;
    for (uint32_t g = 0; g < t->max_groups; g++) {
        pq_group *grp = pq_group_at(t, g);
        if (grp->name[0] == 0) {
            if (free_slot < 0)
                free_slot = (int)g;
        } else if (strncmp(grp->name, name, PQ_GROUP_NAME_MAX) == 0) {
            if (incarnation)
                *incarnation = atomic_load_explicit(&grp->incarnation, memory_order_relaxed);
            pthread_mutex_unlock(&t->hdr->lock);
            return (int)g;
        }
    }
    if (!create || free_slot < 0) {
        pthread_mutex_unlock(&t->hdr->lock);
        return create ? -ENOSPC : -ENOENT;
    }
    pq_group *grp = pq_group_at(t, (uint32_t)free_slot);
    /* The group lock too: a join of the slot's previous group (it checks
     * the incarnation under it) never sees a half-made one. */
    rc = pq_group_lock(t, grp);
    if (rc == 0) {
        pq_group_reset(t, grp);
        uint64_t inc = atomic_load_explicit(&grp->incarnation, memory_order_relaxed) + 1;
        atomic_store_explicit(&grp->incarnation, inc, memory_order_relaxed);
        /* The name, its first byte last: until it is there the slot is
         * free (a holder that dies in between leaves it free). */
        size_t n = strlen(name);
        memset(grp->name + 1, 0, sizeof grp->name - 1);
        memcpy(grp->name + 1, name + 1, n - 1);
        grp->name[0] = name[0];
        if (incarnation)
            *incarnation = inc;
        pthread_mutex_unlock(&grp->lock);
    }
    pthread_mutex_unlock(&t->hdr->lock);
    return rc < 0 ? rc : free_slot;
}

int pq_group_name(pq_group_table *t, uint32_t g, char *out)
{
    if (g >= t->max_groups || out == NULL)
        return -EINVAL;
    int rc = pq_group_table_lock(t);
    if (rc < 0)
        return rc;
    pq_group *grp = pq_group_at(t, g);
    memcpy(out, grp->name, PQ_GROUP_NAME_MAX);
    out[PQ_GROUP_NAME_MAX - 1] = 0;
    pthread_mutex_unlock(&t->hdr->lock);
    return out[0] ? 0 : -ENOENT;
}

/* ---- membership and assignment (under the group lock) ------------------ */

static void pq_group_rebalance(pq_group_table *t, pq_group *grp);
static int pq_group_remove_gone(pq_group *grp);

/* The group lock. A holder that died may have left an assignment half
 * rewritten, and was likely a member itself: remove the members that are
 * gone and rebalance from scratch (every step of it is idempotent), and
 * wake the pollers. */
static int pq_group_lock(pq_group_table *t, pq_group *grp)
{
    int died;
    int rc = pq_lock_take(&grp->lock, &died);
    if (rc == 0 && died) {
        pq_group_remove_gone(grp);
        pq_group_rebalance(t, grp);
        rc = pthread_mutex_consistent(&grp->lock);
        if (rc != 0) {
            pthread_mutex_unlock(&grp->lock);
            return -rc;
        }
        if (t->wake != NULL)
            pq_event_notify(t->wake, INT32_MAX);
    }
    return rc;
}

static void pq_group_unlock_notify(pq_group_table *t, pq_group *grp, int changed)
{
    pthread_mutex_unlock(&grp->lock);
    if (changed && t->wake != NULL)
        pq_event_notify(t->wake, INT32_MAX);
}

static int pq_group_slot_of(uint64_t member_id)
{
    uint32_t slot = (uint32_t)(member_id & ((1u << PQ_GROUP_SLOT_BITS) - 1));
    return slot < PQ_GROUP_MEMBERS ? (int)slot : -1;
}

/* Is member_id a member now? (under the lock, or as a hint without it) */
static int pq_group_is_member(pq_group *grp, uint64_t member_id)
{
    int slot = pq_group_slot_of(member_id);
    if (member_id == 0 || slot < 0)
        return 0;
    pq_group_member *m = &grp->members[slot];
    return atomic_load_explicit(&m->owner, memory_order_relaxed) != 0 &&
           atomic_load_explicit(&m->member_id, memory_order_relaxed) == member_id;
}

/* Should the member in slot i be removed (dead or silent too long)? */
static int pq_group_member_gone(pq_group_member *m, int64_t now)
{
    uint64_t owner = atomic_load_explicit(&m->owner, memory_order_relaxed);
    if (owner == 0)
        return 0;
    int64_t timeout = atomic_load_explicit(&m->timeout_ns, memory_order_relaxed);
    int64_t beat = atomic_load_explicit(&m->heartbeat_ns, memory_order_relaxed);
    if (timeout > 0 && now - beat > timeout)
        return 1;
    int32_t pid;
    uint64_t start32;
    pq_proc_unpack(owner, &pid, &start32);
    return pq_proc_alive(pid, start32, 1) == 0;
}

static int pq_group_remove_gone(pq_group *grp)
{
    int64_t now = pq_monotonic_ns();
    int removed = 0;
    for (uint32_t i = 0; i < PQ_GROUP_MEMBERS; i++) {
        pq_group_member *m = &grp->members[i];
        if (pq_group_member_gone(m, now)) {
            atomic_store_explicit(&m->owner, 0, memory_order_relaxed);
            atomic_store_explicit(&m->member_id, 0, memory_order_relaxed);
            removed++;
        }
    }
    return removed;
}

/*
 * A sticky assignment: partitions whose owner is still a member stay
 * with it, up to that member's quota (P / n, and one more for the P % n
 * members that hold the most already); the rest go, in partition order,
 * to members below their quota, with the new generation as their epoch.
 */
static void pq_group_rebalance(pq_group_table *t, pq_group *grp)
{
    uint64_t ids[PQ_GROUP_MEMBERS];
    uint32_t counts[PQ_GROUP_MEMBERS], quota[PQ_GROUP_MEMBERS], order[PQ_GROUP_MEMBERS];
    uint32_t n = 0, P = t->partitions;
    uint64_t gen = atomic_load_explicit(&grp->generation, memory_order_relaxed) + 1;

    for (uint32_t i = 0; i < PQ_GROUP_MEMBERS; i++) {
        pq_group_member *m = &grp->members[i];
        if (atomic_load_explicit(&m->owner, memory_order_relaxed) != 0) {
            ids[n] = atomic_load_explicit(&m->member_id, memory_order_relaxed);
            counts[n] = 0;
            n++;
        }
    }
    for (uint32_t p = 0; p < P; p++) {
        pq_group_part *pt = &grp->parts[p];
        uint64_t owner = atomic_load_explicit(&pt->owner_id, memory_order_relaxed);
        uint32_t k = 0;
        while (k < n && ids[k] != owner)
            k++;
        if (owner != 0 && k < n) {
            counts[k]++;
        } else {
            atomic_store_explicit(&pt->owner_id, 0, memory_order_relaxed);
            atomic_store_explicit(&pt->epoch, 0, memory_order_relaxed);
        }
    }
    if (n > 0) {
        /* Members by what they hold, most first (insertion sort, stable). */
        for (uint32_t i = 0; i < n; i++) {
            uint32_t j = i;
            while (j > 0 && counts[order[j - 1]] < counts[i]) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = i;
        }
        for (uint32_t r = 0; r < n; r++)
            quota[order[r]] = P / n + (r < P % n ? 1 : 0);
        /* Give back what is over quota, highest partitions first. */
        for (uint32_t p = P; p-- > 0;) {
            pq_group_part *pt = &grp->parts[p];
            uint64_t owner = atomic_load_explicit(&pt->owner_id, memory_order_relaxed);
            if (owner == 0)
                continue;
            uint32_t k = 0;
            while (ids[k] != owner)
                k++;
            if (counts[k] > quota[k]) {
                counts[k]--;
                atomic_store_explicit(&pt->owner_id, 0, memory_order_relaxed);
                atomic_store_explicit(&pt->epoch, 0, memory_order_relaxed);
            }
        }
        uint32_t k = 0;
        for (uint32_t p = 0; p < P; p++) {
            pq_group_part *pt = &grp->parts[p];
            if (atomic_load_explicit(&pt->owner_id, memory_order_relaxed) != 0)
                continue;
            while (counts[k] >= quota[k])
                k = (k + 1) % n; /* sum of quotas is P: someone is below */
            counts[k]++;
            atomic_store_explicit(&pt->epoch, gen, memory_order_relaxed);
            atomic_store_explicit(&pt->owner_id, ids[k], memory_order_relaxed);
        }
    }
    /* release: whoever sees the new generation (acquire) sees its
     * assignment (pq_group_assignment also reads it under the lock). */
    atomic_store_explicit(&grp->generation, gen, memory_order_release);
}

int pq_group_join(pq_group_table *t, uint32_t g, uint64_t incarnation, int64_t timeout_ns,
                  uint64_t *member_id)
{
    pq_proc_id self;
    if (g >= t->max_groups || member_id == NULL || timeout_ns < 0)
        return -EINVAL;
    int rc = pq_proc_self(&self);
    if (rc < 0)
        return rc;
    pq_group *grp = pq_group_at(t, g);
    rc = pq_group_lock(t, grp);
    if (rc < 0)
        return rc;
    if (atomic_load_explicit(&grp->incarnation, memory_order_relaxed) != incarnation ||
        grp->name[0] == 0) {
        pthread_mutex_unlock(&grp->lock);
        return -ENOENT; /* deleted (and maybe made anew) since it was found */
    }
    pq_group_remove_gone(grp);
    uint32_t slot = 0;
    while (slot < PQ_GROUP_MEMBERS &&
           atomic_load_explicit(&grp->members[slot].owner, memory_order_relaxed) != 0)
        slot++;
    if (slot == PQ_GROUP_MEMBERS) {
        /* Those removed above still rebalance. */
        pq_group_rebalance(t, grp);
        pq_group_unlock_notify(t, grp, 1);
        return -EUSERS;
    }
    uint64_t counter = atomic_load_explicit(&grp->next_member_id, memory_order_relaxed) + 1;
    atomic_store_explicit(&grp->next_member_id, counter, memory_order_relaxed);
    uint64_t id = (counter << PQ_GROUP_SLOT_BITS) | slot;
    pq_group_member *m = &grp->members[slot];
    atomic_store_explicit(&m->member_id, id, memory_order_relaxed);
    atomic_store_explicit(&m->heartbeat_ns, pq_monotonic_ns(), memory_order_relaxed);
    atomic_store_explicit(&m->timeout_ns, timeout_ns, memory_order_relaxed);
    /* The owner last: a holder that dies before it leaves the slot free. */
    atomic_store_explicit(&m->owner, pq_proc_pack(&self), memory_order_relaxed);
    pq_group_rebalance(t, grp);
    pq_group_unlock_notify(t, grp, 1);
    *member_id = id;
    return 0;
}

int pq_group_leave(pq_group_table *t, uint32_t g, uint64_t member_id)
{
    if (g >= t->max_groups)
        return -EINVAL;
    pq_group *grp = pq_group_at(t, g);
    int rc = pq_group_lock(t, grp);
    if (rc < 0)
        return rc;
    int was = pq_group_is_member(grp, member_id);
    if (was) {
        pq_group_member *m = &grp->members[pq_group_slot_of(member_id)];
        atomic_store_explicit(&m->owner, 0, memory_order_relaxed);
        atomic_store_explicit(&m->member_id, 0, memory_order_relaxed);
        pq_group_rebalance(t, grp);
    }
    pq_group_unlock_notify(t, grp, was);
    return 0;
}

int pq_group_heartbeat(pq_group_table *t, uint32_t g, uint64_t member_id)
{
    if (g >= t->max_groups)
        return -EINVAL;
    pq_group *grp = pq_group_at(t, g);
    if (!pq_group_is_member(grp, member_id))
        return -ESTALE;
    /* relaxed: reapers allow seconds of slack; a beat that lands just
     * after the member was removed is overwritten by the next join. */
    atomic_store_explicit(&grp->members[pq_group_slot_of(member_id)].heartbeat_ns,
                          pq_monotonic_ns(), memory_order_relaxed);
    return 0;
}

int pq_group_reap(pq_group_table *t, uint32_t g)
{
    if (g >= t->max_groups)
        return -EINVAL;
    pq_group *grp = pq_group_at(t, g);
    int64_t now = pq_monotonic_ns();
    int any = 0;
    /* A look without the lock first: the lock is only taken (and the
     * group rebalanced) when someone is to be removed. */
    for (uint32_t i = 0; i < PQ_GROUP_MEMBERS && !any; i++)
        any = pq_group_member_gone(&grp->members[i], now);
    if (!any)
        return 0;
    int rc = pq_group_lock(t, grp);
    if (rc < 0)
        return rc;
    int removed = pq_group_remove_gone(grp);
    if (removed > 0)
        pq_group_rebalance(t, grp);
    pq_group_unlock_notify(t, grp, removed > 0);
    return removed;
}

uint64_t pq_group_generation(pq_group_table *t, uint32_t g)
{
    return atomic_load_explicit(&pq_group_at(t, g)->generation, memory_order_acquire);
}

const _Atomic uint64_t *pq_group_generation_word(pq_group_table *t, uint32_t g)
{
    return &pq_group_at(t, g)->generation;
}

int pq_group_assignment(pq_group_table *t, uint32_t g, uint64_t member_id, uint64_t *epochs,
                        uint64_t *generation)
{
    if (g >= t->max_groups || epochs == NULL)
        return -EINVAL;
    pq_group *grp = pq_group_at(t, g);
    int rc = pq_group_lock(t, grp);
    if (rc < 0)
        return rc;
    rc = pq_group_is_member(grp, member_id) ? 0 : -ESTALE;
    for (uint32_t p = 0; p < t->partitions; p++) {
        pq_group_part *pt = &grp->parts[p];
        int mine = rc == 0 && atomic_load_explicit(&pt->owner_id, memory_order_relaxed) == member_id;
        epochs[p] = mine ? atomic_load_explicit(&pt->epoch, memory_order_relaxed) : 0;
    }
    if (generation)
        *generation = atomic_load_explicit(&grp->generation, memory_order_relaxed);
    pthread_mutex_unlock(&grp->lock);
    return rc;
}

int pq_group_commit(pq_group_table *t, uint32_t g, uint64_t member_id, const uint32_t *parts,
                    const uint64_t *offsets, const uint64_t *epochs, uint32_t n,
                    uint64_t now_ms)
{
    if (g >= t->max_groups || (n > 0 && (parts == NULL || offsets == NULL || epochs == NULL)))
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++)
        if (parts[i] >= t->partitions || offsets[i] == PQ_GROUP_NO_OFFSET || epochs[i] == 0)
            return -EINVAL;
    pq_group *grp = pq_group_at(t, g);
    int rc = pq_group_lock(t, grp);
    if (rc < 0)
        return rc;
    rc = pq_group_is_member(grp, member_id) ? 0 : -ESTALE;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        pq_group_part *pt = &grp->parts[parts[i]];
        if (atomic_load_explicit(&pt->owner_id, memory_order_relaxed) != member_id ||
            atomic_load_explicit(&pt->epoch, memory_order_relaxed) != epochs[i])
            rc = -ESTALE; /* fenced: the partition moved on */
    }
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        pq_group_part *pt = &grp->parts[parts[i]];
        atomic_store_explicit(&pt->committed_ms, now_ms, memory_order_relaxed);
        /* release: pairs with the acquire in pq_group_committed. */
        atomic_store_explicit(&pt->committed, offsets[i], memory_order_release);
    }
    pthread_mutex_unlock(&grp->lock);
    return rc;
}

int pq_group_committed(pq_group_table *t, uint32_t g, uint32_t part, uint64_t *offset,
                       uint64_t *committed_ms)
{
    if (g >= t->max_groups || part >= t->partitions || offset == NULL)
        return -EINVAL;
    pq_group_part *pt = &pq_group_at(t, g)->parts[part];
    uint64_t o = atomic_load_explicit(&pt->committed, memory_order_acquire);
    if (committed_ms)
        *committed_ms = atomic_load_explicit(&pt->committed_ms, memory_order_relaxed);
    if (o == PQ_GROUP_NO_OFFSET)
        return -ENODATA;
    *offset = o;
    return 0;
}

int pq_group_set_committed(pq_group_table *t, uint32_t g, uint32_t part, uint64_t offset,
                           uint64_t committed_ms)
{
    if (g >= t->max_groups || part >= t->partitions)
        return -EINVAL;
    pq_group *grp = pq_group_at(t, g);
    int rc = pq_group_lock(t, grp);
    if (rc < 0)
        return rc;
    atomic_store_explicit(&grp->parts[part].committed_ms, committed_ms, memory_order_relaxed);
    atomic_store_explicit(&grp->parts[part].committed, offset, memory_order_release);
    pthread_mutex_unlock(&grp->lock);
    return 0;
}

int pq_group_delete(pq_group_table *t, uint32_t g)
{
    if (g >= t->max_groups)
        return -EINVAL;
    int rc = pq_group_table_lock(t);
    if (rc < 0)
        return rc;
    pq_group *grp = pq_group_at(t, g);
    rc = pq_group_lock(t, grp);
    if (rc == 0) {
        if (pq_group_remove_gone(grp) > 0)
            pq_group_rebalance(t, grp);
        for (uint32_t i = 0; i < PQ_GROUP_MEMBERS && rc == 0; i++)
            if (atomic_load_explicit(&grp->members[i].owner, memory_order_relaxed) != 0)
                rc = -EBUSY;
        if (rc == 0) {
            /* A new incarnation: a join of the old group is refused. Free
             * first; the reset is redone at the next create. */
            atomic_fetch_add_explicit(&grp->incarnation, 1, memory_order_relaxed);
            grp->name[0] = 0;
            pq_group_reset(t, grp);
        }
        pthread_mutex_unlock(&grp->lock);
    }
    pthread_mutex_unlock(&t->hdr->lock);
    return rc;
}

int pq_group_members(pq_group_table *t, uint32_t g, pq_group_member_info *out, uint32_t max)
{
    if (g >= t->max_groups || (max > 0 && out == NULL))
        return -EINVAL;
    pq_group *grp = pq_group_at(t, g);
    int rc = pq_group_lock(t, grp);
    if (rc < 0)
        return rc;
    int64_t now = pq_monotonic_ns();
    uint32_t n = 0;
    for (uint32_t i = 0; i < PQ_GROUP_MEMBERS && n < max; i++) {
        pq_group_member *m = &grp->members[i];
        uint64_t owner = atomic_load_explicit(&m->owner, memory_order_relaxed);
        if (owner == 0)
            continue;
        pq_group_member_info *info = &out[n++];
        uint64_t start32;
        pq_proc_unpack(owner, &info->pid, &start32);
        info->alive = pq_proc_alive(info->pid, start32, 1);
        info->member_id = atomic_load_explicit(&m->member_id, memory_order_relaxed);
        info->idle_ns = now - atomic_load_explicit(&m->heartbeat_ns, memory_order_relaxed);
        info->partitions = 0;
        for (uint32_t p = 0; p < t->partitions; p++)
            if (atomic_load_explicit(&grp->parts[p].owner_id, memory_order_relaxed) ==
                info->member_id)
                info->partitions++;
    }
    pthread_mutex_unlock(&grp->lock);
    return (int)n;
}

uint64_t pq_group_owner(pq_group_table *t, uint32_t g, uint32_t part)
{
    if (g >= t->max_groups || part >= t->partitions)
        return 0;
    return atomic_load_explicit(&pq_group_at(t, g)->parts[part].owner_id, memory_order_relaxed);
}
