/*
 * pq_record.h - the record format shared by every ring of pyqueue (the
 * queue's pq_ring and the topic's pq_topic): a 16-byte header of two
 * 64-bit atomic words, then the payload padded to 16 bytes. A record never
 * wraps; a PADDING record fills the end of the data area instead.
 * docs/design.md ("Records") explains the fields.
 */
#ifndef PQ_RECORD_H
#define PQ_RECORD_H

#include "pq_common.h"

#define PQ_RECORD_HEADER 16u
#define PQ_RECORD_ALIGN 16u

enum pq_record_state {
    PQ_REC_CLAIMED = 1,   /* a producer is writing it; owner word says who */
    PQ_REC_COMMITTED = 2, /* readable */
    PQ_REC_PADDING = 3,   /* filler up to the end of the data area */
    PQ_REC_ABANDONED = 4, /* its producer died before committing */
};

#define PQ_CTL_LEN_MASK 0xffffffffull
#define PQ_CTL_TYPE_SHIFT 32
#define PQ_CTL_STATE_SHIFT 40
#define PQ_CTL_TAG_SHIFT 48

typedef struct pq_record_header {
    /* bits 0-31 payload length, 32-39 type, 40-47 state, 48-63 position tag */
    _Atomic uint64_t ctl;
    /* owner of a CLAIMED record: pid | (start time & 0xffffffff) << 32 */
    _Atomic uint64_t owner;
} pq_record_header;

/* Bytes one record with a payload of len bytes takes in the data area. */
static inline uint64_t pq_record_size(uint64_t len)
{
    return PQ_RECORD_HEADER + pq_align_up(len, PQ_RECORD_ALIGN);
}

/*
 * The tag ties a header to the position it was written for, so a reader
 * holding a stale position that reads an overwritten area (old payload
 * bytes where it expected a header) notices before acting on it. 16 bits
 * of pos / 16: it cannot tell laps apart on rings of 1 MiB or more.
 */
static inline uint64_t pq_record_tag(uint64_t pos)
{
    return (pos >> 4) & 0xffffu;
}

static inline uint64_t pq_record_ctl(uint64_t pos, uint32_t len, uint8_t type, uint8_t state)
{
    return (uint64_t)len | ((uint64_t)type << PQ_CTL_TYPE_SHIFT) |
           ((uint64_t)state << PQ_CTL_STATE_SHIFT) | (pq_record_tag(pos) << PQ_CTL_TAG_SHIFT);
}

static inline uint32_t pq_ctl_len(uint64_t ctl) { return (uint32_t)(ctl & PQ_CTL_LEN_MASK); }
static inline uint8_t pq_ctl_type(uint64_t ctl) { return (uint8_t)(ctl >> PQ_CTL_TYPE_SHIFT); }
static inline uint8_t pq_ctl_state(uint64_t ctl) { return (uint8_t)(ctl >> PQ_CTL_STATE_SHIFT); }
static inline uint64_t pq_ctl_tag(uint64_t ctl) { return ctl >> PQ_CTL_TAG_SHIFT; }

#endif /* PQ_RECORD_H */
