/*
 * pq_segment.h - the header every pyqueue segment starts with.
 *
 * One format for every kind of segment (queue, topic, log, ...): a fixed
 * 256-byte header, then the kind's control block, then its data area at
 * data_offset. Readers validate the header before trusting any field and
 * bound every length by the mapped size.
 */
#ifndef PQ_SEGMENT_H
#define PQ_SEGMENT_H

#include "pq_common.h"

/* "PYQUEUE\0" read as a little-endian 64-bit word. */
#define PQ_SEGMENT_MAGIC 0x0045554555515950ULL
#define PQ_LAYOUT_VERSION 4u
#define PQ_SEGMENT_HEADER_BYTES 256u
#define PQ_SEGMENT_PARAMS 16

enum pq_kind {
    PQ_KIND_QUEUE = 1,
    PQ_KIND_TOPIC = 2,
    PQ_KIND_LOG = 3,
    PQ_KIND_LOG_DIR = 4, /* the control file of a directory-mode log */
    PQ_KIND_WORKQ = 5,   /* an acknowledged work queue */
};

enum pq_segment_state {
    PQ_SEGMENT_INITIALIZING = 0,
    PQ_SEGMENT_READY = 1,
};

/* Error codes of validation, all negative errno values. */
#define PQ_ERR_NOT_PYQUEUE (-EPROTO)          /* bad magic: not a pyqueue segment */
#define PQ_ERR_VERSION (-EPROTONOSUPPORT)     /* another layout version */
#define PQ_ERR_KIND (-EMEDIUMTYPE)            /* a pyqueue segment of another kind */
#define PQ_ERR_TRUNCATED (-ERANGE)            /* sizes disagree with the mapping */
#define PQ_ERR_CORRUPT (-EBADMSG)             /* indices or records are inconsistent */

typedef struct pq_segment_header {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t kind;
    uint64_t segment_size;  /* bytes the creator sized the segment to */
    uint64_t data_offset;   /* where the data area starts */
    uint64_t data_size;     /* bytes of the data area */
    int32_t creator_pid;
    uint32_t reserved0;
    uint64_t creator_start_time;
    uint64_t created_unix_ns;
    /* Written last by the creator (release), read first by openers. */
    _Atomic uint32_t state;
    /* 0 while the segment is in use; PQ_SHUTDOWN_* once shut down
     * (pq_shutdown.h): only ever raised, never cleared. Was reserved (and
     * zero) before; docs/design.md, "Shutdown", says why the layout
     * version stayed. */
    _Atomic uint32_t shutdown;
    uint64_t params[PQ_SEGMENT_PARAMS]; /* creation parameters, per kind */
} pq_segment_header;

_Static_assert(sizeof(pq_segment_header) <= PQ_SEGMENT_HEADER_BYTES, "segment header too big");

/*
 * Fill the header of a fresh, zeroed segment of `size` bytes. The segment
 * stays INITIALIZING (openers get -EAGAIN) until pq_segment_publish.
 */
int pq_segment_init(void *base, size_t size, uint32_t kind, uint64_t data_offset,
                    uint64_t data_size, const uint64_t *params, int nparams);

/* Mark the segment READY; everything written before is visible to openers. */
void pq_segment_publish(void *base);

/*
 * Validate a mapped segment: 0 when it is a READY pyqueue segment of the
 * expected kind whose sizes fit in `size`; -EAGAIN while it is being
 * initialized; PQ_ERR_* otherwise. kind 0 accepts any kind.
 */
int pq_segment_check(const void *base, size_t size, uint32_t kind);

#endif /* PQ_SEGMENT_H */
