/* pq_uring_futex.c - futex waits on an io_uring an event loop watches. */
#define _GNU_SOURCE
#include "pq_uring_futex.h"

#include <linux/futex.h>
#include <linux/io_uring.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Newer than some distributions' headers (the numbers are the kernel's
 * ABI, the same on every architecture). */
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#define PQ_IORING_OP_FUTEX_WAIT 51 /* Linux 6.7 */
#define PQ_IORING_SETUP_COOP_TASKRUN (1U << 8) /* Linux 5.19 */
#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 0x02
#endif

#define PQ_URING_SQ_ENTRIES 16 /* each submission is entered at once */

static int pq_uring_enter(int fd, unsigned submit, unsigned min_complete, unsigned flags)
{
    long rc = syscall(__NR_io_uring_enter, fd, submit, min_complete, flags, NULL, 0);
    return rc < 0 ? -errno : (int)rc;
}

static void pq_uring_unmap(pq_uring *u)
{
    if (u->sqes != NULL && u->sqes != MAP_FAILED)
        munmap(u->sqes, u->sqes_size);
    if (u->cq_ring != NULL && u->cq_ring != MAP_FAILED && u->cq_ring != u->sq_ring)
        munmap(u->cq_ring, u->cq_ring_size);
    if (u->sq_ring != NULL && u->sq_ring != MAP_FAILED)
        munmap(u->sq_ring, u->sq_ring_size);
    u->sqes = u->cq_ring = u->sq_ring = NULL;
}

void pq_uring_close(pq_uring *u)
{
    pq_uring_unmap(u);
    if (u->fd >= 0)
        close(u->fd);
    u->fd = -1;
}

static int pq_uring_map(pq_uring *u, const struct io_uring_params *p)
{
    u->sq_ring_size = p->sq_off.array + p->sq_entries * sizeof(unsigned);
    u->cq_ring_size = p->cq_off.cqes + p->cq_entries * sizeof(struct io_uring_cqe);
    if (p->features & IORING_FEAT_SINGLE_MMAP) { /* 5.4+: one mapping holds both */
        if (u->cq_ring_size > u->sq_ring_size)
            u->sq_ring_size = u->cq_ring_size;
        u->cq_ring_size = u->sq_ring_size;
    }
    u->sq_ring = mmap(NULL, u->sq_ring_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      u->fd, IORING_OFF_SQ_RING);
    if (u->sq_ring == MAP_FAILED)
        return -errno;
    if (p->features & IORING_FEAT_SINGLE_MMAP) {
        u->cq_ring = u->sq_ring;
    } else {
        u->cq_ring = mmap(NULL, u->cq_ring_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                          u->fd, IORING_OFF_CQ_RING);
        if (u->cq_ring == MAP_FAILED)
            return -errno;
    }
    u->sqes_size = p->sq_entries * sizeof(struct io_uring_sqe);
    u->sqes = mmap(NULL, u->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
                   IORING_OFF_SQES);
    if (u->sqes == MAP_FAILED)
        return -errno;
    char *sq = u->sq_ring, *cq = u->cq_ring;
    u->sq_head = (_Atomic unsigned *)(sq + p->sq_off.head);
    u->sq_tail = (_Atomic unsigned *)(sq + p->sq_off.tail);
    u->sq_mask = *(unsigned *)(sq + p->sq_off.ring_mask);
    u->sq_array = (unsigned *)(sq + p->sq_off.array);
    u->sq_flags = (_Atomic unsigned *)(sq + p->sq_off.flags);
    u->cq_head = (_Atomic unsigned *)(cq + p->cq_off.head);
    u->cq_tail = (_Atomic unsigned *)(cq + p->cq_off.tail);
    u->cq_mask = *(unsigned *)(cq + p->cq_off.ring_mask);
    u->cqes = cq + p->cq_off.cqes;
    u->sq_entries = p->sq_entries;
    u->cq_entries = p->cq_entries;
    return 0;
}

/* Queue one request and enter it. The kernel reads the submission queue
 * only inside io_uring_enter, which only this thread calls (no SQPOLL), so
 * a request the kernel refused is taken back by moving the tail back. */
static int pq_uring_submit(pq_uring *u, const struct io_uring_sqe *sqe)
{
    /* Relaxed: only this thread writes the tail. */
    unsigned tail = atomic_load_explicit(u->sq_tail, memory_order_relaxed);
    /* Acquire: the kernel has read the entries before its head moved. */
    unsigned head = atomic_load_explicit(u->sq_head, memory_order_acquire);
    if (tail - head >= u->sq_entries)
        return -EBUSY; /* cannot happen: every request is entered at once */
    unsigned idx = tail & u->sq_mask;
    memcpy((struct io_uring_sqe *)u->sqes + idx, sqe, sizeof(*sqe));
    u->sq_array[idx] = idx;
    /* Release: the entry and its array slot are written before the kernel
     * sees the new tail. */
    atomic_store_explicit(u->sq_tail, tail + 1, memory_order_release);
    int rc = pq_uring_enter(u->fd, 1, 0, 0);
    if (rc == 1)
        return 0;
    if (atomic_load_explicit(u->sq_head, memory_order_acquire) != tail + 1) {
        /* Not consumed: take it back (the kernel reads the tail only when
         * entered, by this thread). */
        atomic_store_explicit(u->sq_tail, tail, memory_order_relaxed);
        return rc < 0 ? rc : -EAGAIN;
    }
    return 0; /* consumed; its error, if any, comes as its completion */
}

int pq_uring_wait(pq_uring *u, _Atomic uint32_t *word, uint32_t expected, uint64_t tag)
{
    if (tag == PQ_URING_TAG_CANCEL)
        return -EINVAL;
    struct io_uring_sqe sqe;
    memset(&sqe, 0, sizeof(sqe));
    sqe.opcode = PQ_IORING_OP_FUTEX_WAIT;
    sqe.fd = FUTEX2_SIZE_U32;       /* futex2 flags: 32 bits, shared (not FUTEX2_PRIVATE) */
    sqe.addr = (uint64_t)(uintptr_t)word;
    sqe.off = expected;             /* addr2: the value */
    sqe.addr3 = FUTEX_BITSET_MATCH_ANY; /* the mask: woken by any FUTEX_WAKE */
    sqe.user_data = tag;
    return pq_uring_submit(u, &sqe);
}

int pq_uring_cancel(pq_uring *u, uint64_t tag)
{
    struct io_uring_sqe sqe;
    memset(&sqe, 0, sizeof(sqe));
    sqe.opcode = IORING_OP_ASYNC_CANCEL;
    sqe.fd = -1;
    sqe.addr = tag; /* the user_data of the request to cancel */
    sqe.user_data = PQ_URING_TAG_CANCEL;
    return pq_uring_submit(u, &sqe);
}

static unsigned pq_uring_reap_queued(pq_uring *u, pq_uring_done *out, unsigned max)
{
    /* Relaxed: only this thread moves the head. */
    unsigned head = atomic_load_explicit(u->cq_head, memory_order_relaxed);
    /* Acquire: the entries up to the tail are written before it moved. */
    unsigned tail = atomic_load_explicit(u->cq_tail, memory_order_acquire);
    unsigned n = 0;
    while (head != tail && n < max) { /* bounded: at most max */
        const struct io_uring_cqe *c = (const struct io_uring_cqe *)u->cqes + (head & u->cq_mask);
        out[n].tag = c->user_data;
        out[n].res = c->res;
        n++;
        head++;
    }
    /* Release: the entries are read before the kernel may reuse them. */
    atomic_store_explicit(u->cq_head, head, memory_order_release);
    return n;
}

unsigned pq_uring_reap(pq_uring *u, pq_uring_done *out, unsigned max)
{
    unsigned n = pq_uring_reap_queued(u, out, max);
    /* Relaxed: a hint; the enter below and the acquire load of the tail in
     * the next reap order what it brings in. */
    if (n < max && (atomic_load_explicit(u->sq_flags, memory_order_relaxed) &
                    IORING_SQ_CQ_OVERFLOW)) {
        /* The queue is drained and the kernel holds completions aside: an
         * enter with GETEVENTS (and no wait: min_complete 0) moves them in. */
        if (pq_uring_enter(u->fd, 0, 0, IORING_ENTER_GETEVENTS) >= 0)
            n += pq_uring_reap_queued(u, out + n, max - n);
    }
    return n;
}

/* A futex wait on a word that already differs completes at once with
 * -EAGAIN where the kernel has IORING_OP_FUTEX_WAIT, -EINVAL where not. */
static int pq_uring_probe(pq_uring *u)
{
    _Atomic uint32_t word = 1;
    int rc = pq_uring_wait(u, &word, 0, 1);
    if (rc < 0)
        return rc;
    rc = pq_uring_enter(u->fd, 0, 1, IORING_ENTER_GETEVENTS);
    if (rc < 0)
        return rc;
    pq_uring_done d;
    if (pq_uring_reap(u, &d, 1) != 1)
        return -EPROTO;
    if (d.res == -EAGAIN)
        return 0;
    return d.res == -EINVAL ? -EOPNOTSUPP : (d.res < 0 ? d.res : -EPROTO);
}

int pq_uring_open(pq_uring *u, unsigned cq_entries)
{
    memset(u, 0, sizeof(*u));
    u->fd = -1;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    /* COOP_TASKRUN (5.19, older than the futex op): a completion is run as
     * task work of the loop's thread; a sleeping thread (epoll_wait) is
     * still woken at once, but one running Python code is not interrupted
     * by an IPI for it: the work runs at its next system call, which a loop
     * makes every turn. */
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | PQ_IORING_SETUP_COOP_TASKRUN;
    p.cq_entries = cq_entries;
    long fd = syscall(__NR_io_uring_setup, PQ_URING_SQ_ENTRIES, &p);
    if (fd < 0)
        return -errno;
    u->fd = (int)fd; /* O_CLOEXEC: the kernel makes every ring's fd close-on-exec */
    int rc = pq_uring_map(u, &p);
    if (rc == 0)
        rc = pq_uring_probe(u);
    if (rc < 0)
        pq_uring_close(u);
    return rc;
}
