/*
 * pq_crc32c.h - CRC32C (Castagnoli), the checksum of Log records.
 *
 * Reflected polynomial 0x82F63B78 with the usual initial and final
 * inversion (iSCSI / RFC 3720, ext4, Kafka's record batches):
 * pq_crc32c(0, "123456789", 9) == 0xE3069283. The crc argument chains
 * calls: pq_crc32c(pq_crc32c(0, a, n), b, m) is the CRC of a then b.
 *
 * On x86-64 the SSE4.2 crc32 instruction is used when the CPU has it
 * (checked once at run time, no -msse4.2 needed); elsewhere, or without
 * it, a portable slice-by-8 table implementation. Both give the same bits.
 */
#ifndef PQ_CRC32C_H
#define PQ_CRC32C_H

#include "pq_common.h"

/* CRC32C of len bytes at data (NULL allowed when len is 0), continuing from
 * crc (0 to start). Thread-safe, async-signal-unsafe only on the very first
 * call of the process (which builds the tables). */
uint32_t pq_crc32c(uint32_t crc, const void *data, size_t len);

/* The two implementations, for tests and benchmarks. pq_crc32c_hw falls
 * back to the portable code when pq_crc32c_hw_available() is 0. */
uint32_t pq_crc32c_sw(uint32_t crc, const void *data, size_t len);
uint32_t pq_crc32c_hw(uint32_t crc, const void *data, size_t len);
int pq_crc32c_hw_available(void);

#endif /* PQ_CRC32C_H */
