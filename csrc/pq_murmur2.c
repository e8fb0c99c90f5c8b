/*
 * pq_murmur2.c - Kafka's murmur2 and default partitioner.
 *
 * Java does this in signed 32-bit ints with wrap-around; here everything is
 * uint32_t (same bits, no undefined overflow) and converted at the end.
 */
#include "pq_murmur2.h"

#define PQ_MURMUR2_SEED 0x9747b28cu
#define PQ_MURMUR2_M 0x5bd1e995u
#define PQ_MURMUR2_R 24

int32_t pq_murmur2(const void *key, size_t len)
{
    const uint8_t *p = key;
    /* Java: int h = seed ^ length (length is an int: the low 32 bits). */
    uint32_t h = PQ_MURMUR2_SEED ^ (uint32_t)len;
    size_t nblocks = len / 4;

    for (size_t i = 0; i < nblocks; i++, p += 4) {
        uint32_t k = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24;
        k *= PQ_MURMUR2_M;
        k ^= k >> PQ_MURMUR2_R;
        k *= PQ_MURMUR2_M;
        h *= PQ_MURMUR2_M;
        h ^= k;
    }

    switch (len & 3) {
    case 3:
        h ^= (uint32_t)p[2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)p[1] << 8;
        /* fall through */
    case 1:
        h ^= (uint32_t)p[0];
        h *= PQ_MURMUR2_M;
        break;
    default:
        break;
    }

    h ^= h >> 13;
    h *= PQ_MURMUR2_M;
    h ^= h >> 15;

    /* Two's complement reinterpretation, without implementation-defined
     * conversion of an out-of-range value. */
    return h <= INT32_MAX ? (int32_t)h : -(int32_t)(~h) - 1;
}

uint32_t pq_kafka_partition(const void *key, size_t len, uint32_t num_partitions)
{
    if (num_partitions == 0)
        return 0;
    uint32_t positive = (uint32_t)pq_murmur2(key, len) & 0x7fffffffu;
    return positive % num_partitions;
}
