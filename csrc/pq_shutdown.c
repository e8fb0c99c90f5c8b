/* pq_shutdown.c - raising a segment's shutdown flag (pq_shutdown.h). */
#include "pq_shutdown.h"

int pq_shutdown_set(void *base, uint32_t how)
{
    if (base == NULL || (how & ~PQ_SHUTDOWN_MASK) != 0 || (how & PQ_SHUTDOWN_DRAIN) == 0)
        return -EINVAL;
    pq_segment_header *h = base;
    /* seq_cst: the flag is raised before the wake that follows reads the
     * waiter counts (the Dekker handshake of pq_wait.h); fetch_or, since
     * shutdown(False) after shutdown(True) must not lower IMMEDIATE. */
    uint32_t before = atomic_fetch_or_explicit(&h->shutdown, how, memory_order_seq_cst);
    return (int)(before & PQ_SHUTDOWN_MASK);
}
