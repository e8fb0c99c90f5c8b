/* pq_segment.c - the common segment header: create, publish, validate. */
#define _GNU_SOURCE
#include "pq_segment.h"

#include <string.h>
#include <time.h>

#include "pq_proc.h"

int pq_segment_init(void *base, size_t size, uint32_t kind, uint64_t data_offset,
                    uint64_t data_size, const uint64_t *params, int nparams)
{
    pq_segment_header *h = base;
    pq_proc_id self;
    struct timespec now;

    if (base == NULL || size < PQ_SEGMENT_HEADER_BYTES || nparams < 0 ||
        nparams > PQ_SEGMENT_PARAMS)
        return -EINVAL;
    if (data_offset < PQ_SEGMENT_HEADER_BYTES || data_offset > size ||
        data_size > size - data_offset)
        return -EINVAL;
    if (pq_proc_self(&self) < 0)
        self.pid = 0, self.start_time = 0;
    clock_gettime(CLOCK_REALTIME, &now);

    memset(h, 0, PQ_SEGMENT_HEADER_BYTES);
    h->magic = PQ_SEGMENT_MAGIC;
    h->layout_version = PQ_LAYOUT_VERSION;
    h->kind = kind;
    h->segment_size = size;
    h->data_offset = data_offset;
    h->data_size = data_size;
    h->creator_pid = self.pid;
    h->creator_start_time = self.start_time;
    h->created_unix_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    for (int i = 0; i < nparams; i++)
        h->params[i] = params[i];
    atomic_store_explicit(&h->state, PQ_SEGMENT_INITIALIZING, memory_order_relaxed);
    return 0;
}

void pq_segment_publish(void *base)
{
    pq_segment_header *h = base;
    /* release: an opener that reads READY (acquire) sees the whole
     * initialized header and control block. */
    atomic_store_explicit(&h->state, PQ_SEGMENT_READY, memory_order_release);
}

int pq_segment_check(const void *base, size_t size, uint32_t kind)
{
    const pq_segment_header *h = base;

    if (base == NULL || size < PQ_SEGMENT_HEADER_BYTES)
        return PQ_ERR_TRUNCATED;
    if (h->magic != PQ_SEGMENT_MAGIC) {
        /* A creator that has not written the header yet leaves zeros. */
        return h->magic == 0 ? -EAGAIN : PQ_ERR_NOT_PYQUEUE;
    }
    /* acquire: pairs with pq_segment_publish. */
    if (atomic_load_explicit(&((pq_segment_header *)h)->state, memory_order_acquire) !=
        PQ_SEGMENT_READY)
        return -EAGAIN;
    if (h->layout_version != PQ_LAYOUT_VERSION)
        return PQ_ERR_VERSION;
    if (kind != 0 && h->kind != kind)
        return PQ_ERR_KIND;
    if (h->segment_size > size || h->data_offset < PQ_SEGMENT_HEADER_BYTES ||
        h->data_offset > h->segment_size || h->data_size > h->segment_size - h->data_offset)
        return PQ_ERR_TRUNCATED;
    return 0;
}
