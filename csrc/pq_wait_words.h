/*
 * pq_wait_words.h - park on several futex words at once, with a deadline
 * (Linux futex_waitv, 5.16+). The asyncio binding's one waiter thread per
 * process parks here on the pq_event sequence words of every segment its
 * coroutines wait on, plus a private word of its own that a new
 * registration bumps.
 */
#ifndef PQ_WAIT_WORDS_H
#define PQ_WAIT_WORDS_H

#include "pq_common.h"

/* The kernel's limit on words per wait (FUTEX_WAITV_MAX). */
#define PQ_WAIT_WORDS_MAX 128

typedef struct pq_wait_word {
    _Atomic uint32_t *word;
    uint32_t expected;
    uint32_t private_word; /* 1: a word of this process only (FUTEX_PRIVATE) */
} pq_wait_word;

/*
 * Park until one of the n words is woken, until any of them no longer
 * holds its expected value, until deadline_ns (CLOCK_MONOTONIC, absolute;
 * < 0: none) or a signal. Returns the index of a woken word, n when a word
 * already differed (nothing to wait for), -ETIMEDOUT at the deadline,
 * -EINTR on a signal, -EINVAL for n of 0 or above PQ_WAIT_WORDS_MAX,
 * -EFAULT for an unmapped word. On a kernel without futex_waitv (before
 * 5.16: ENOSYS, remembered) it is pq_wait_words_sliced.
 */
int pq_wait_words(const pq_wait_word *w, uint32_t n, int64_t deadline_ns);

/* How long pq_wait_words_sliced parks between two looks at the words. */
#define PQ_WAIT_WORDS_SLICE_NS (2 * 1000000LL)

/*
 * The same wait without futex_waitv: parks on one word (the last private
 * one, else the last) for up to PQ_WAIT_WORDS_SLICE_NS at a time and looks
 * at every word between parks. Returns as pq_wait_words does; a change of a
 * word other than the parked one is seen up to a slice late (the cost of an
 * old kernel: at most 500 looks a second while a wait lasts). Public for
 * the C tests, which run the whole suite against both.
 */
int pq_wait_words_sliced(const pq_wait_word *w, uint32_t n, int64_t deadline_ns);

#endif /* PQ_WAIT_WORDS_H */
