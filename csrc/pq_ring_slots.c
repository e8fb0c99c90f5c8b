/*
 * pq_ring_slots.c - the record ring's process slots: which consumer
 * process is taking which batch, so that messages a consumer took (its
 * consume CAS succeeded) and died with before handing them over are
 * counted as abandoned instead of vanishing. The announcement itself is
 * in pq_ring_take (pq_ring.c); docs/design.md, "Consumers that die holding
 * messages", has the protocol.
 */
#define _GNU_SOURCE
#include <limits.h>

#include "pq_cas.h"
#include "pq_proc.h"
#include "pq_ring.h"

/* The i-th slot to try: even slots first, so that the first
 * PQ_RING_SLOTS / 2 consumers each get a cache line of their own. */
static inline int pq_slot_order(int i)
{
    const int half = PQ_RING_SLOTS / 2;
    return (i % half) * 2 + i / half;
}

/*
 * If the process `owner` that holds slot s is dead, free the slot and
 * count what it took and did not hand over. Returns the messages counted
 * (>= 0), or -1 when the slot was left alone (owner alive, liveness
 * unknown, or the slot changed meanwhile: another reaper was first).
 */
static int64_t pq_slot_reap(pq_ring *r, pq_ring_slot *s, uint64_t owner)
{
    int32_t pid;
    uint64_t start32;
    pq_proc_unpack(owner, &pid, &start32);
    if (pq_proc_alive(pid, start32, 1) != 0)
        return -1;
    /*
     * Dead (exited, killed, a zombie, or its pid reused): it writes
     * nothing any more, and what it wrote before it died is visible now
     * (we learned of its death from the kernel). So read the announcement
     * after the liveness check, and head after that: a head read before
     * it could miss the owner's CAS.
     */
    uint64_t w = atomic_load_explicit(&s->taking, memory_order_acquire);
    uint64_t th = atomic_load_explicit(&s->taking_head, memory_order_acquire);
    uint64_t tn = atomic_load_explicit(&s->taking_next, memory_order_acquire);
    uint64_t h = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
#if PQ_HEAD_PAIR_CAS
    /* Free the slot and clear its announcement in one step: exactly one
     * reaper wins and counts, and whoever claims the slot next finds
     * nothing announced in it. */
    uint64_t lo = owner, hi = w;
    if (!pq_cas_pair(&s->owner, &lo, &hi, 0, 0))
        return -1;
#else
    /* Without a pair CAS the next claimer clears taking after claiming
     * (pq_ring_slot_claim): a claimer that dies between the two leaves
     * this announcement to be counted a second time. */
    uint64_t expected = owner;
    if (!atomic_compare_exchange_strong_explicit(&s->owner, &expected, 0, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return -1;
#endif
    uint64_t n = w >> PQ_SLOT_HELD_SHIFT;
    uint32_t batch = (uint32_t)w;
    /*
     * The batch counts when head has passed it. If the owner's CAS
     * succeeded, head >= taking_next for good (head only grows; unsigned
     * differences from taking_head, which head had reached). If head is
     * still below, the owner died before its CAS: it took nothing of the
     * batch, which is still in the queue. (Head past the batch although
     * the owner's CAS failed is the window of docs/design.md: the owner
     * died between its announcement and the clear after a lost CAS.)
     */
    if (batch != 0 && h - th >= tn - th)
        n += batch;
    if (n != 0)
        pq_ring_count(r, PQ_COUNT_ABANDONED_TAKEN, n);
    return (int64_t)n;
}

int pq_ring_reap_dead_consumers(pq_ring *r)
{
    pq_ring_ctl *c = r->ctl;
    pq_proc_id self;
    uint64_t me = pq_proc_self(&self) == 0 ? pq_proc_pack(&self) : 0;
    int64_t total = 0;

    for (int i = 0; i < PQ_RING_SLOTS; i++) {
        pq_ring_slot *s = &c->slots[i];
        uint64_t owner = atomic_load_explicit(&s->owner, memory_order_acquire);
        if (owner == 0 || owner == me)
            continue; /* free, or ours (alive) */
        /* Nothing announced: nothing to count. (A dead process's slot with
         * nothing in it is freed when a claimer finds no free slot.) An
         * owner that announces after this load is seen by the next call. */
        if (atomic_load_explicit(&s->taking, memory_order_relaxed) == 0)
            continue;
        int64_t n = pq_slot_reap(r, s, owner);
        if (n > 0)
            total += n;
    }
    return total > INT_MAX ? INT_MAX : (int)total;
}

pq_ring_slot *pq_ring_slot_claim(pq_ring *r, uint64_t owner)
{
    pq_ring_ctl *c = r->ctl;

    /* A new process for this view (first take, or a forked child): what
     * the view held belongs to its parent's slot. */
    r->slot = -1;
    r->held = 0;
    r->slot_owner = owner;
    r->slot_forks = pq_proc_forks; /* owner came from pq_proc_self */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < PQ_RING_SLOTS; i++) {
            int k = pq_slot_order(i);
            pq_ring_slot *s = &c->slots[k];
            uint64_t expected = 0;
            if (atomic_load_explicit(&s->owner, memory_order_relaxed) != 0)
                continue;
            /* acquire: the free (pq_slot_reap, pq_ring_release_slot)
             * cleared taking before it let the slot go. */
            if (!atomic_compare_exchange_strong_explicit(&s->owner, &expected, owner,
                                                         memory_order_acq_rel,
                                                         memory_order_relaxed))
                continue;
#if !PQ_HEAD_PAIR_CAS
            atomic_store_explicit(&s->taking, 0, memory_order_release);
#endif
            r->slot = k;
            return s;
        }
        if (pass == 1)
            break;
        /* None free: free the slots of dead processes, counting what they
         * died with, and look again (a /proc read per held slot, once per
         * view while the table is full). */
        for (int i = 0; i < PQ_RING_SLOTS; i++) {
            uint64_t o = atomic_load_explicit(&c->slots[i].owner, memory_order_acquire);
            if (o != 0 && o != owner)
                pq_slot_reap(r, &c->slots[i], o);
        }
    }
    /* Every slot is held by a live process: this view takes without
     * accounting (it does not look again; a fork child does). */
    return NULL;
}

void pq_ring_taken_done(pq_ring *r)
{
    if (PQ_LIKELY(r->held == 0))
        return; /* nothing taken, or no slot */
    r->held = 0;
    if (r->slot < 0 || r->slot_forks != pq_proc_forks)
        return; /* a forked child: the slot is its parent's */
    /* release: after the objects were built (program order, for a reaper
     * that finds us dead). */
    atomic_store_explicit(&r->ctl->slots[r->slot].taking, 0, memory_order_release);
}

void pq_ring_release_slot(pq_ring *r)
{
    int k = r->slot;
    uint64_t owner = r->slot_owner;
    int same_process = r->slot_forks == pq_proc_forks;
    r->slot = -1;
    r->held = 0;
    r->slot_owner = 0; /* a later take claims again */
    if (k < 0 || !same_process)
        return; /* none, or a forked child: the slot is its parent's */
    pq_ring_slot *s = &r->ctl->slots[k];
    atomic_store_explicit(&s->taking, 0, memory_order_release);
    uint64_t expected = owner;
    atomic_compare_exchange_strong_explicit(&s->owner, &expected, 0, memory_order_release,
                                            memory_order_relaxed);
}
