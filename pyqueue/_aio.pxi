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
    /* The sequence word of a pq_event (its first field), loaded with
     * acquire: pairs with the release bump in pq_event_notify. */
    static inline uint32_t pq_aio_event_seq(uintptr_t ev)
    {
        return atomic_load_explicit(&((pq_event *)ev)->seq, memory_order_acquire);
    }
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
    uint32_t pq_aio_event_seq(uintptr_t ev) nogil
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
    return pq_aio_event_seq(ev)


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
