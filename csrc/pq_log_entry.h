/*
 * pq_log_entry.h - what a log record is to its callers, whatever stores it:
 * an entry to append (pq_log_entry) and a record read back
 * (pq_log_record). Shared by the memory-mode ring (pq_log.h) and the
 * segment files of directory mode (pq_dseg.h).
 */
#ifndef PQ_LOG_ENTRY_H
#define PQ_LOG_ENTRY_H

#include "pq_common.h"

#define PQ_LOG_NO_KEY UINT32_MAX /* key_len of a record without a key */

/* One record to append. key NULL: no key. */
typedef struct pq_log_entry {
    const void *key;
    uint32_t key_len;
    const void *headers;
    uint32_t headers_len;
    const void *value;
    uint32_t value_len;
    uint8_t type; /* the value's codec, kept in the record header's type */
} pq_log_entry;

/* A record read back: pointers into the storage. In the memory-mode ring
 * they are valid only until pq_log_validate says the copy is good; in a
 * segment file, as long as the file is mapped. */
typedef struct pq_log_record {
    uint64_t offset;
    uint64_t timestamp_ms;
    const uint8_t *key; /* NULL: no key */
    uint32_t key_len;
    const uint8_t *headers;
    uint32_t headers_len;
    const uint8_t *value;
    uint32_t value_len;
    uint8_t type;
} pq_log_record;

#endif /* PQ_LOG_ENTRY_H */
