/* pq_topic_subs.c - a read-only look at a topic's subscriber table, for
 * monitoring (pyqueue stats / metrics / top). See pq_topic.h. */
#define _GNU_SOURCE
#include "pq_topic.h"

#include <errno.h>

#include "pq_proc.h"

int pq_topic_get_sub_stats(const pq_topic *t, int slot, pq_topic_sub_stats *out)
{
    if (slot < 0 || slot >= PQ_TOPIC_SUBS)
        return -EINVAL;
    const pq_topic_slot *s = &t->ctl->slots[slot];
    /* Relaxed: a monitoring snapshot. Each word is read once; the words of
     * one slot may come from different moments (a reader moving on, a
     * lapped subscriber jumping), which only skews the numbers shown by
     * the messages in flight, never makes them invalid. */
    uint64_t owner = atomic_load_explicit(&s->owner, memory_order_relaxed);
    if (owner == 0)
        return -ENOENT;
    int32_t pid;
    uint64_t start32;
    pq_proc_unpack(owner, &pid, &start32);
    /* Acquire on tail_msgs as pq_topic_lag does: the count of messages
     * claimed, which the slot's msgs is compared with. */
    uint64_t claimed = atomic_load_explicit(&t->ctl->tail_msgs, memory_order_acquire);
    uint64_t msgs = atomic_load_explicit(&s->msgs, memory_order_relaxed);
    out->pid = pid;
    out->lag = claimed > msgs ? claimed - msgs : 0;
    out->lost = atomic_load_explicit(&s->lost, memory_order_relaxed);
    out->read = msgs;
    return 0;
}
