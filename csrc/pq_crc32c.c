/*
 * pq_crc32c.c - CRC32C: portable slice-by-8, and SSE4.2 on x86-64.
 *
 * The slice-by-8 tables (8 x 256 words) are built on first use under
 * pthread_once. The SSE4.2 code is compiled with a function-level target
 * attribute and only called after __builtin_cpu_supports("sse4.2").
 */
#include "pq_crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PQ_CRC32C_X86 1
#include <nmmintrin.h>
#else
#define PQ_CRC32C_X86 0
#endif

#define PQ_CRC32C_POLY 0x82F63B78u

static uint32_t pq_crc32c_table[8][256];
static pthread_once_t pq_crc32c_once = PTHREAD_ONCE_INIT;

static void pq_crc32c_build_tables(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int b = 0; b < 8; b++)
            c = (c >> 1) ^ (PQ_CRC32C_POLY & (0u - (c & 1u)));
        pq_crc32c_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = pq_crc32c_table[0][i];
        for (int t = 1; t < 8; t++) {
            c = (c >> 8) ^ pq_crc32c_table[0][c & 0xffu];
            pq_crc32c_table[t][i] = c;
        }
    }
}

/* 8 bytes as a little-endian word, at any alignment. */
static inline uint64_t pq_crc32c_load_le64(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof w);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

uint32_t pq_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    const uint32_t(*t)[256] = (const uint32_t(*)[256])pq_crc32c_table;

    pthread_once(&pq_crc32c_once, pq_crc32c_build_tables);
    crc = ~crc;
    while (len > 0 && ((uintptr_t)p & 7u) != 0) {
        crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xffu];
        len--;
    }
    while (len >= 8) {
        uint64_t w = pq_crc32c_load_le64(p);
        uint32_t lo = crc ^ (uint32_t)w;
        uint32_t hi = (uint32_t)(w >> 32);
        crc = t[7][lo & 0xffu] ^ t[6][(lo >> 8) & 0xffu] ^ t[5][(lo >> 16) & 0xffu] ^
              t[4][lo >> 24] ^ t[3][hi & 0xffu] ^ t[2][(hi >> 8) & 0xffu] ^
              t[1][(hi >> 16) & 0xffu] ^ t[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len > 0) {
        crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xffu];
        len--;
    }
    return ~crc;
}

#if PQ_CRC32C_X86

__attribute__((target("sse4.2"))) static uint32_t pq_crc32c_sse42(uint32_t crc,
                                                                   const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t c = ~crc;

    while (len > 0 && ((uintptr_t)p & 7u) != 0) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, sizeof w);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    while (len > 0) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    return ~(uint32_t)c;
}

/* 0: not checked yet, 1: no SSE4.2, 2: SSE4.2. Racing first callers all
 * store the same value. */
static _Atomic int pq_crc32c_hw_state;

int pq_crc32c_hw_available(void)
{
    int s = atomic_load_explicit(&pq_crc32c_hw_state, memory_order_relaxed);
    if (PQ_UNLIKELY(s == 0)) {
        __builtin_cpu_init();
        s = __builtin_cpu_supports("sse4.2") ? 2 : 1;
        atomic_store_explicit(&pq_crc32c_hw_state, s, memory_order_relaxed);
    }
    return s == 2;
}

uint32_t pq_crc32c_hw(uint32_t crc, const void *data, size_t len)
{
    if (pq_crc32c_hw_available())
        return pq_crc32c_sse42(crc, data, len);
    return pq_crc32c_sw(crc, data, len);
}

#else /* !PQ_CRC32C_X86 */

int pq_crc32c_hw_available(void)
{
    return 0;
}

uint32_t pq_crc32c_hw(uint32_t crc, const void *data, size_t len)
{
    return pq_crc32c_sw(crc, data, len);
}

#endif

uint32_t pq_crc32c(uint32_t crc, const void *data, size_t len)
{
#if PQ_CRC32C_X86
    if (PQ_LIKELY(pq_crc32c_hw_available()))
        return pq_crc32c_sse42(crc, data, len);
#endif
    return pq_crc32c_sw(crc, data, len);
}
