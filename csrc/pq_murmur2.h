/*
 * pq_murmur2.h - Kafka's key hash and default partitioner.
 *
 * pq_murmur2 is bit-exact with org.apache.kafka.common.utils.Utils.murmur2
 * (MurmurHash2, seed 0x9747b28c, little-endian 4-byte blocks), so that a
 * key lands on the partition a Kafka Java producer would choose for it.
 */
#ifndef PQ_MURMUR2_H
#define PQ_MURMUR2_H

#include "pq_common.h"

/* Kafka's Utils.murmur2(key): the 32-bit hash as Java's signed int. key may
 * be NULL when len is 0. */
int32_t pq_murmur2(const void *key, size_t len);

/*
 * Kafka's default partitioner for a keyed record:
 * Utils.toPositive(Utils.murmur2(key)) % num_partitions, i.e.
 * (murmur2 & 0x7fffffff) % num_partitions. num_partitions 0 gives 0 (the
 * caller validates partition counts; this never divides by zero).
 */
uint32_t pq_kafka_partition(const void *key, size_t len, uint32_t num_partitions);

#endif /* PQ_MURMUR2_H */
