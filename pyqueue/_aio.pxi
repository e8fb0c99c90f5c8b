# The asyncio binding's primitives (pyqueue/_aio.py): register on a
# pq_event of a mapped segment, and the one waiter thread's park on many
# event words at once (csrc/pq_wait_words.h). Included by _core.pyx.
#
# An event is named by its address, which a handle's _event_address gives
# (the handle must stay referenced, and so mapped, while it is used).
# Nothing here is public: a wrong address is a crash.

cdef extern from "pq_wait.h" nogil:
    ctypedef struct pq_event:
        pass
    uint32_t pq_event_prepare(pq_event* ev)
    void pq_event_finish(pq_event* ev)
    void pq_event_notify(pq_event* ev, int n)
    uint32_t pq_event_seq(pq_event* ev)
    int pq_futex_wake(uint32_t* word, int n)

cdef extern from "pq_wait_words.h" nogil:
    int PQ_WAIT_WORDS_MAX
    ctypedef struct pq_wait_word:
        uint32_t* word
        uint32_t expected
        uint32_t private_word
    int pq_wait_words(const pq_wait_word* w, uint32_t n, int64_t deadline_ns)

cdef extern from *:
    """
    #include <stdatomic.h>
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #include "pq_wait.h"
    /* A process-private wake word: bumped (release: the registration
     * made before it is seen by the thread that reads the new value) and
     * woken. */
    static inline void pq_aio_word_bump(uint32_t *w)
    {
        atomic_fetch_add_explicit((_Atomic uint32_t *)w, 1, memory_order_release);
        syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }
    static inline uint32_t pq_aio_word_load(uint32_t *w)
    {
        return atomic_load_explicit((_Atomic uint32_t *)w, memory_order_acquire);
    }
    """
    void pq_aio_word_bump(uint32_t* w) nogil
    uint32_t pq_aio_word_load(uint32_t* w) nogil

_AIO_WAIT_WORDS_MAX = PQ_WAIT_WORDS_MAX


def _aio_prepare(uintptr_t ev):
    """Register as a waiter on the event; returns its sequence value (to
    park on after re-checking the condition)."""
    return pq_event_prepare(<pq_event*>ev)


def _aio_finish(uintptr_t ev):
    """Unregister a waiter registered by _aio_prepare."""
    pq_event_finish(<pq_event*>ev)


def _aio_notify(uintptr_t ev, int n):
    """Wake up to n waiters of the event (passes on a wake-up that a
    cancelled coroutine received)."""
    pq_event_notify(<pq_event*>ev, n)


def _aio_seq(uintptr_t ev):
    """The event's sequence value now."""
    return pq_event_seq(<pq_event*>ev)


cdef class _AioWakeWord:
    """A process-private futex word that the waiter thread parks on beside
    the events: bump() wakes it (a new registration, or a stop)."""
    cdef uint32_t* _w

    def __cinit__(self):
        self._w = <uint32_t*>malloc(64)
        if self._w == NULL:
            raise MemoryError()
        self._w[0] = 0

    def __dealloc__(self):
        free(self._w)

    def bump(self):
        pq_aio_word_bump(self._w)

    def load(self):
        return pq_aio_word_load(self._w)

    def address(self):
        return <uintptr_t>self._w


def _aio_wait(list events, list expected, _AioWakeWord wake, uint32_t wake_seen,
              int64_t deadline_ns):
    """Park (GIL released) until one of the events' sequence words moves
    from its expected value, the wake word from wake_seen, deadline_ns
    (CLOCK_MONOTONIC; < 0: none) or a signal. Returns pq_wait_words's
    value: >= 0 worth looking (n + 1: a word differed before the park),
    -ETIMEDOUT, -EINTR, -EFAULT (a word unmapped). Never raises: the
    waiter thread decides."""
    cdef pq_wait_word w[128]
    cdef Py_ssize_t n = len(events)
    cdef Py_ssize_t i
    cdef int rc
    if n + 1 > PQ_WAIT_WORDS_MAX or len(expected) != n:
        raise ValueError("too many events for one wait")
    for i in range(n):
        w[i].word = <uint32_t*><uintptr_t>events[i]  # pq_event's seq: its first field
        w[i].expected = <uint32_t>expected[i]
        w[i].private_word = 0
    w[n].word = wake._w
    w[n].expected = wake_seen
    w[n].private_word = 1
    with nogil:
        rc = pq_wait_words(w, <uint32_t>(n + 1), deadline_ns)
    return rc


# ------------------------------------------------------------------
# A loop's own ring (csrc/pq_uring_futex.h): futex waits whose completion
# makes the ring's fd readable, so the loop's selector wakes on a
# producer's futex wake with no thread in between. Every call on a ring is
# made on the thread of the loop that owns it (the kernel wakes the thread
# that submitted).

cdef extern from "pq_uring_futex.h" nogil:
    ctypedef struct pq_uring:
        int fd
    ctypedef struct pq_uring_done:
        uint64_t tag
        int res
    int pq_uring_open(pq_uring* u, unsigned cq_entries)
    void pq_uring_close(pq_uring* u)
    int pq_uring_cancel(pq_uring* u, uint64_t tag)
    unsigned pq_uring_reap(pq_uring* u, pq_uring_done* out, unsigned max)

cdef extern from *:
    """
    #include "pq_uring_futex.h"
    /* An event's sequence word by its address (a pq_event's first field). */
    static inline int pq_aio_ring_wait(pq_uring *u, uintptr_t word, uint32_t expected,
                                       uint64_t tag)
    {
        return pq_uring_wait(u, (_Atomic uint32_t *)word, expected, tag);
    }
    """
    int pq_aio_ring_wait(pq_uring* u, uintptr_t word, uint32_t expected, uint64_t tag) nogil


cdef class _AioRing:
    """An io_uring of futex waits (see above). Raises OSError when the
    kernel refuses it (no io_uring, a seccomp profile, a kernel before 6.7
    without futex waits on it)."""
    cdef pq_uring _u
    cdef bint _open

    def __cinit__(self, unsigned cq_entries):
        self._u.fd = -1
        cdef int rc = pq_uring_open(&self._u, cq_entries)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))
        self._open = True

    def __dealloc__(self):
        if self._open:
            pq_uring_close(&self._u)

    def fileno(self):
        return self._u.fd

    def close(self):
        if self._open:
            self._open = False
            pq_uring_close(&self._u)

    def wait(self, uintptr_t ev, uint32_t expected, uint64_t tag):
        """Submit a wait on event ev's sequence word while it holds
        expected; 0 or -errno (then nothing was submitted)."""
        if not self._open:
            return -EINVAL
        return pq_aio_ring_wait(&self._u, ev, expected, tag)

    def cancel(self, uint64_t tag):
        """Cancel the wait of tag (its completion comes with -ECANCELED
        unless it had come already); 0 or -errno."""
        if not self._open:
            return -EINVAL
        return pq_uring_cancel(&self._u, tag)

    def reap(self):
        """The completions queued now, as a list of (tag, res)."""
        cdef pq_uring_done d[64]
        cdef unsigned n, i
        out = []
        if not self._open:
            return out
        while True:
            n = pq_uring_reap(&self._u, d, 64)
            for i in range(n):
                out.append((d[i].tag, d[i].res))
            if n < 64:
                return out
