/*
 * pq_uring_futex.h - futex waits that an event loop can watch: an io_uring
 * (Linux 6.7+, IORING_OP_FUTEX_WAIT) whose fd is readable when one of its
 * waits completes. The asyncio binding parks a coroutine's registration
 * here, on the loop's own thread, so that a producer's futex wake wakes the
 * loop itself (one thread hop instead of two through a waiter thread).
 *
 * One ring belongs to one thread: the thread that submits its waits is the
 * one the kernel wakes (its completions run as that thread's task work), so
 * every call on a ring is made by that thread. No locking.
 */
#ifndef PQ_URING_FUTEX_H
#define PQ_URING_FUTEX_H

#include "pq_common.h"

typedef struct pq_uring {
    int fd; /* the ring; readable (poll/epoll) when a completion is queued */
    unsigned sq_entries, cq_entries;
    _Atomic unsigned *sq_head, *sq_tail, *cq_head, *cq_tail;
    _Atomic unsigned *sq_flags; /* IORING_SQ_CQ_OVERFLOW: completions wait in the kernel */
    unsigned sq_mask, cq_mask;
    unsigned *sq_array;
    void *sqes;  /* struct io_uring_sqe[sq_entries] */
    void *cqes;  /* struct io_uring_cqe[cq_entries], inside cq_ring */
    void *sq_ring, *cq_ring;
    size_t sq_ring_size, cq_ring_size, sqes_size;
} pq_uring;

/* One completion: the tag its wait was submitted with, and its result (0:
 * woken, -EAGAIN: the word already differed, -ECANCELED: cancelled, or
 * another -errno such as -EFAULT for an unmapped word). */
typedef struct pq_uring_done {
    uint64_t tag;
    int32_t res;
} pq_uring_done;

/* The tag of a cancel request's own completion (never a wait's tag). */
#define PQ_URING_TAG_CANCEL 0

/*
 * Set up a ring with room for cq_entries completions, and check that the
 * kernel runs futex waits on it. Returns 0, or -errno: -ENOSYS (no
 * io_uring), -EPERM (refused: a seccomp profile, io_uring_disabled),
 * -EINVAL or -EOPNOTSUPP (no IORING_OP_FUTEX_WAIT: a kernel before 6.7),
 * -ENOMEM. On error nothing is left open.
 */
int pq_uring_open(pq_uring *u, unsigned cq_entries);

/* Close the ring; its waits still queued end with it. */
void pq_uring_close(pq_uring *u);

/*
 * Submit a wait on the shared (not process-private) 32-bit futex word for
 * as long as it holds expected; its completion carries tag (not
 * PQ_URING_TAG_CANCEL). The kernel reads the word now: after this call the
 * word's mapping may go (the wait then completes only by a cancel or the
 * ring's close). Returns 0 or -errno (-EBUSY or -EAGAIN: the rings are
 * full; nothing was submitted).
 */
int pq_uring_wait(pq_uring *u, _Atomic uint32_t *word, uint32_t expected, uint64_t tag);

/* Ask the kernel to cancel the wait submitted with tag: it completes with
 * -ECANCELED unless it had completed already; the cancel's own completion
 * has PQ_URING_TAG_CANCEL. Returns 0 or -errno. */
int pq_uring_cancel(pq_uring *u, uint64_t tag);

/* Move up to max queued completions into out; returns how many (0: none,
 * never waits). Completions the kernel kept aside because the queue was
 * full (IORING_FEAT_NODROP) are brought into it once it is drained, so
 * none is lost and the fd does not stay readable with nothing to reap. */
unsigned pq_uring_reap(pq_uring *u, pq_uring_done *out, unsigned max);

#endif /* PQ_URING_FUTEX_H */
