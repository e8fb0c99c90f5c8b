/*
 * test_segment.c - the common segment header: init/publish/check, every
 * validation error, and fuzzing of the header (pq_segment_check,
 * pq_ring_open) and of a ring's cursors and record headers (pq_ring_peek,
 * pq_ring_consume, pq_ring_repair_head must stay inside the data area).
 * Run it under ASan (make SANITIZE=1): the fuzzed buffers are malloc'd to
 * their exact size, and the ring sits between PROT_NONE guard pages.
 */
#include "pq_test.h"

#include "../pq_ring.h"
#include "../pq_segment.h"

#define SEG_SIZE 8192u

static int test_init_publish_check(void)
{
    uint8_t *base = pq_test_shared(SEG_SIZE);
    uint64_t params[3] = {11, 22, 33};
    CHECK(base != NULL);

    /* Zeroed memory: the creator has not written the header yet. */
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), -EAGAIN);

    CHECK_EQ(pq_segment_init(base, SEG_SIZE, PQ_KIND_TOPIC, 1024, 4096, params, 3), 0);
    /* Initialized but not published. */
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, PQ_KIND_TOPIC), -EAGAIN);
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), -EAGAIN);

    pq_segment_publish(base);
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, PQ_KIND_TOPIC), 0);
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), 0);

    const pq_segment_header *h = (const pq_segment_header *)base;
    CHECK(h->magic == PQ_SEGMENT_MAGIC);
    CHECK(memcmp(base, "PYQUEUE", 8) == 0); /* the magic reads as text */
    CHECK_EQ(h->layout_version, PQ_LAYOUT_VERSION);
    CHECK_EQ(h->kind, PQ_KIND_TOPIC);
    CHECK_EQ(h->segment_size, SEG_SIZE);
    CHECK_EQ(h->data_offset, 1024);
    CHECK_EQ(h->data_size, 4096);
    CHECK_EQ(h->creator_pid, getpid());
    CHECK(h->creator_start_time != 0);
    CHECK(h->created_unix_ns != 0);
    CHECK_EQ(h->params[0], 11);
    CHECK_EQ(h->params[2], 33);
    CHECK_EQ(h->params[3], 0);

    /* Bad arguments to init. */
    CHECK_EQ(pq_segment_init(NULL, SEG_SIZE, 1, 256, 0, NULL, 0), -EINVAL);
    CHECK_EQ(pq_segment_init(base, 100, 1, 256, 0, NULL, 0), -EINVAL);
    CHECK_EQ(pq_segment_init(base, SEG_SIZE, 1, 100, 0, NULL, 0), -EINVAL);
    CHECK_EQ(pq_segment_init(base, SEG_SIZE, 1, SEG_SIZE + 1, 0, NULL, 0), -EINVAL);
    CHECK_EQ(pq_segment_init(base, SEG_SIZE, 1, 4096, 4097, NULL, 0), -EINVAL);
    CHECK_EQ(pq_segment_init(base, SEG_SIZE, 1, 4096, 0, params, -1), -EINVAL);
    CHECK_EQ(pq_segment_init(base, SEG_SIZE, 1, 4096, 0, params, PQ_SEGMENT_PARAMS + 1), -EINVAL);
    /* The failed inits left the published header alone. */
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, PQ_KIND_TOPIC), 0);

    munmap(base, SEG_SIZE);
    return 0;
}

/* A published queue segment in a fresh shared mapping. */
static uint8_t *make_published(size_t size, uint32_t kind)
{
    uint8_t *base = pq_test_shared(size);
    if (base == NULL)
        return NULL;
    if (pq_segment_init(base, size, kind, 4096, size - 4096, NULL, 0) != 0)
        return NULL;
    pq_segment_publish(base);
    return base;
}

static int test_validation_errors(void)
{
    uint8_t *base = make_published(SEG_SIZE, PQ_KIND_QUEUE);
    pq_segment_header *h = (pq_segment_header *)base;
    CHECK(base != NULL);
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, PQ_KIND_QUEUE), 0);

    /* Bad magic: not a pyqueue segment. */
    h->magic ^= 0x100;
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, PQ_KIND_QUEUE), PQ_ERR_NOT_PYQUEUE);
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), PQ_ERR_NOT_PYQUEUE);
    h->magic = PQ_SEGMENT_MAGIC;

    /* Another layout version. */
    h->layout_version = PQ_LAYOUT_VERSION + 1;
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, PQ_KIND_QUEUE), PQ_ERR_VERSION);
    h->layout_version = 0;
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, PQ_KIND_QUEUE), PQ_ERR_VERSION);
    h->layout_version = PQ_LAYOUT_VERSION;

    /* Another kind; kind 0 accepts any. */
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, PQ_KIND_LOG), PQ_ERR_KIND);
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, PQ_KIND_TOPIC), PQ_ERR_KIND);
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), 0);

    /* Truncated: the mapping is smaller than the creator sized it. */
    CHECK_EQ(pq_segment_check(base, SEG_SIZE - 1, PQ_KIND_QUEUE), PQ_ERR_TRUNCATED);
    CHECK_EQ(pq_segment_check(base, 4096, PQ_KIND_QUEUE), PQ_ERR_TRUNCATED);
    CHECK_EQ(pq_segment_check(base, PQ_SEGMENT_HEADER_BYTES - 1, PQ_KIND_QUEUE), PQ_ERR_TRUNCATED);
    CHECK_EQ(pq_segment_check(base, 0, PQ_KIND_QUEUE), PQ_ERR_TRUNCATED);
    CHECK_EQ(pq_segment_check(NULL, SEG_SIZE, PQ_KIND_QUEUE), PQ_ERR_TRUNCATED);
    /* A bigger mapping than the segment is fine. */
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, PQ_KIND_QUEUE), 0);

    /* Inconsistent sizes inside the header. */
    h->data_offset = 100; /* inside the header */
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), PQ_ERR_TRUNCATED);
    h->data_offset = SEG_SIZE + 4096; /* beyond the segment */
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), PQ_ERR_TRUNCATED);
    h->data_offset = 4096;
    h->data_size = SEG_SIZE; /* data area runs past the end */
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), PQ_ERR_TRUNCATED);
    h->data_size = UINT64_MAX; /* and wraps */
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), PQ_ERR_TRUNCATED);
    h->data_size = SEG_SIZE - 4096;
    h->segment_size = UINT64_MAX;
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), PQ_ERR_TRUNCATED);
    h->segment_size = SEG_SIZE;
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), 0);

    /* A state other than READY reads as still initializing. */
    atomic_store(&h->state, 7);
    CHECK_EQ(pq_segment_check(base, SEG_SIZE, 0), -EAGAIN);
    atomic_store(&h->state, PQ_SEGMENT_READY);

    munmap(base, SEG_SIZE);
    return 0;
}

static int test_ring_open_validation(void)
{
    const uint64_t cap = 4096;
    const size_t size = pq_ring_segment_size(cap);
    uint8_t *base = pq_test_shared(size);
    pq_segment_header *h = (pq_segment_header *)base;
    pq_ring r;
    CHECK(base != NULL);

    CHECK_EQ(pq_ring_open(&r, base, size), -EAGAIN); /* zeroed */
    CHECK_EQ(pq_ring_create(base, size, cap, 0, NULL, 0), 0);
    CHECK_EQ(pq_ring_open(&r, base, size), 0);
    CHECK_EQ(r.capacity, cap);
    CHECK_EQ(pq_ring_open(&r, base, size - 1), PQ_ERR_TRUNCATED);

    /* A segment of another kind is not a queue. */
    h->kind = PQ_KIND_TOPIC;
    CHECK_EQ(pq_ring_open(&r, base, size), PQ_ERR_KIND);
    h->kind = PQ_KIND_QUEUE;

    /* The capacity parameter must agree with the data area. */
    h->params[PQ_RING_PARAM_CAPACITY] = cap * 2;
    CHECK_EQ(pq_ring_open(&r, base, size), PQ_ERR_TRUNCATED);
    h->params[PQ_RING_PARAM_CAPACITY] = cap;
    h->data_size = cap - 16;
    h->params[PQ_RING_PARAM_CAPACITY] = cap - 16; /* not a power of two */
    CHECK_EQ(pq_ring_open(&r, base, size), PQ_ERR_TRUNCATED);
    h->data_size = 2048;
    h->params[PQ_RING_PARAM_CAPACITY] = 2048; /* below the minimum */
    CHECK_EQ(pq_ring_open(&r, base, size), PQ_ERR_TRUNCATED);
    h->data_size = cap;
    h->params[PQ_RING_PARAM_CAPACITY] = cap;
    h->data_offset = 2048; /* a valid segment, but not where a ring keeps its data */
    CHECK_EQ(pq_segment_check(base, size, PQ_KIND_QUEUE), 0);
    CHECK_EQ(pq_ring_open(&r, base, size), PQ_ERR_TRUNCATED);
    h->data_offset = PQ_RING_DATA_OFFSET;
    CHECK_EQ(pq_ring_open(&r, base, size), 0);

    munmap(base, size);
    return 0;
}

/* --- fuzzing ------------------------------------------------------------ */

static const int valid_codes[] = {0,
                                  -EAGAIN,
                                  PQ_ERR_NOT_PYQUEUE,
                                  PQ_ERR_VERSION,
                                  PQ_ERR_KIND,
                                  PQ_ERR_TRUNCATED,
                                  PQ_ERR_CORRUPT};

static int is_valid_code(int rc)
{
    for (size_t i = 0; i < sizeof valid_codes / sizeof valid_codes[0]; i++)
        if (rc == valid_codes[i])
            return 1;
    return 0;
}

/*
 * Randomize a valid header in one of several ways: random bytes anywhere,
 * one field replaced by an interesting value, or a few bit flips. Then
 * check and open must return a known code, the same one twice, and an
 * open that succeeds must describe a ring that fits in the buffer.
 */
static int test_fuzz_header(void)
{
    uint64_t rng = pq_test_seed();
    const int iters = 20000;
    static const uint64_t interesting[] = {0, 1, 15, 16, 255, 256, 4095, 4096, 4097, 8192,
                                           1ull << 31, 1ull << 32, 1ull << 40, (1ull << 40) + 4096,
                                           UINT64_MAX, UINT64_MAX - 4095, 0x8000000000000000ull};
    const size_t tmpl_size = pq_ring_segment_size(8192);
    uint8_t *tmpl = pq_test_shared(tmpl_size);
    CHECK(tmpl != NULL);
    CHECK_EQ(pq_ring_create(tmpl, tmpl_size, 8192, 5, NULL, 0), 0);

    int accepted = 0;
    for (int it = 0; it < iters; it++) {
        /* The buffer handed to check/open is malloc'd to exactly `size`
         * bytes, so ASan catches any read past it. Sizes cover too small,
         * header only, just short of the ring, exact and bigger. */
        static const size_t sizes[] = {0, 8, 255, 256, 257, 4096, 8191, 12287, 12288, 12289, 16384};
        size_t size = sizes[pq_test_rand(&rng) % (sizeof sizes / sizeof sizes[0])];
        uint8_t *buf = malloc(size ? size : 1);
        CHECK(buf != NULL);
        memcpy(buf, tmpl, size < tmpl_size ? size : tmpl_size);
        if (size > tmpl_size)
            memset(buf + tmpl_size, 0, size - tmpl_size);

        size_t hdr = size < PQ_SEGMENT_HEADER_BYTES ? size : PQ_SEGMENT_HEADER_BYTES;
        if (hdr >= sizeof(pq_segment_header)) {
            pq_segment_header *h = (pq_segment_header *)buf;
            switch (pq_test_rand(&rng) % 4) {
            case 0: /* random bytes over a random span of the header */
            {
                size_t a = pq_test_rand(&rng) % sizeof *h;
                size_t n = 1 + pq_test_rand(&rng) % (sizeof *h - a);
                for (size_t i = 0; i < n; i++)
                    buf[a + i] = (uint8_t)pq_test_rand(&rng);
                break;
            }
            case 1: /* one size field set to an interesting value */
            {
                uint64_t v = interesting[pq_test_rand(&rng) % (sizeof interesting / sizeof interesting[0])];
                switch (pq_test_rand(&rng) % 5) {
                case 0: h->segment_size = v; break;
                case 1: h->data_offset = v; break;
                case 2: h->data_size = v; break;
                case 3: h->params[PQ_RING_PARAM_CAPACITY] = v; break;
                default: h->params[PQ_RING_PARAM_MAXSIZE] = v; break;
                }
                break;
            }
            case 2: /* a few bit flips */
                for (int k = 0; k < 3; k++) {
                    size_t bit = pq_test_rand(&rng) % (sizeof *h * 8);
                    buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                }
                break;
            default: /* two consistent-looking but wrong sizes */
                h->data_size = 1ull << (pq_test_rand(&rng) % 48);
                h->params[PQ_RING_PARAM_CAPACITY] = h->data_size;
                h->segment_size = PQ_RING_DATA_OFFSET + h->data_size;
                break;
            }
        }

        int rc1 = pq_segment_check(size ? buf : NULL, size, 0);
        int rc2 = pq_segment_check(size ? buf : NULL, size, 0);
        CHECK(is_valid_code(rc1));
        CHECK_EQ(rc1, rc2);
        int kq = pq_segment_check(size ? buf : NULL, size, PQ_KIND_QUEUE);
        CHECK(is_valid_code(kq));

        pq_ring r;
        memset(&r, 0, sizeof r);
        int o1 = pq_ring_open(&r, size ? buf : NULL, size);
        int o2 = pq_ring_open(&r, size ? buf : NULL, size);
        CHECK(is_valid_code(o1));
        CHECK_EQ(o1, o2);
        if (kq < 0)
            CHECK_EQ(o1, kq); /* open fails at least where check does */
        if (o1 == 0) {
            accepted++;
            CHECK(kq == 0);
            CHECK(pq_is_power_of_two(r.capacity));
            CHECK(r.capacity >= PQ_RING_MIN_CAPACITY);
            CHECK(pq_ring_segment_size(r.capacity) <= size);
            CHECK(r.data == buf + PQ_RING_DATA_OFFSET);
            CHECK(r.mask == r.capacity - 1);
            CHECK(pq_ring_record_size(r.max_payload) <= r.capacity / 2);
        }
        free(buf);
    }
    printf("       header fuzz: %d iterations, %d opened (seed %#" PRIx64 ")\n", iters, accepted,
           pq_test_seed());
    munmap(tmpl, tmpl_size);
    return 0;
}

/* The ring's data area with a PROT_NONE page on either side. */
typedef struct guarded {
    uint8_t *map;
    size_t map_size;
    uint8_t *base; /* segment start */
    size_t size;   /* segment size */
} guarded;

static int guarded_ring(guarded *g, uint64_t cap)
{
    long page = sysconf(_SC_PAGESIZE);
    g->size = pq_ring_segment_size(cap);
    g->map_size = g->size + 2 * (size_t)page;
    g->map = pq_test_shared(g->map_size);
    CHECK(g->map != NULL);
    g->base = g->map + page;
    CHECK(mprotect(g->map, page, PROT_NONE) == 0);
    CHECK(mprotect(g->base + g->size, page, PROT_NONE) == 0);
    CHECK_EQ(pq_ring_create(g->base, g->size, cap, 0, NULL, 0), 0);
    return 0;
}

static uint64_t random_ctl(uint64_t *rng, uint64_t pos, uint64_t cap)
{
    uint64_t r = pq_test_rand(rng);
    uint64_t len, state, tag;
    /* Mostly plausible headers (right tag, known state, small length), so
     * the walk goes deep; sometimes anything. */
    if (r % 8 == 0)
        return pq_test_rand(rng);
    switch ((r >> 3) % 4) {
    case 0: len = pq_test_rand(rng) % 64; break;
    case 1: len = pq_test_rand(rng) % cap; break;
    case 2: len = cap - 16 - (pos & (cap - 1)) + (pq_test_rand(rng) % 3) * 16 - 16; break;
    default: len = pq_test_rand(rng) & 0xffffffffu; break;
    }
    state = (r >> 8) % 8 == 0 ? (pq_test_rand(rng) & 0xff) : 1 + (r >> 11) % 4;
    tag = (r >> 16) % 16 == 0 ? (pq_test_rand(rng) & 0xffff) : (pos >> 4) & 0xffff;
    return (len & 0xffffffffu) | ((uint64_t)((r >> 24) & 0xff) << 32) | (state << 40) | (tag << 48);
}

static int test_fuzz_peek(void)
{
    uint64_t rng = pq_test_seed() ^ 0x5555;
    const uint64_t cap = 4096;
    const int iters = 20000;
    guarded g;
    pq_ring r;
    pq_ring_record recs[64];
    pq_ring_batch b;
    int counts[8] = {0};
    uint64_t returned = 0;

    if (guarded_ring(&g, cap) != 0)
        return 1;
    CHECK_EQ(pq_ring_open(&r, g.base, g.size), 0);

    for (int it = 0; it < iters; it++) {
        /* Random cursors: usually near each other and aligned (the walk
         * then reads headers), sometimes anything. */
        uint64_t h = pq_test_rand(&rng);
        if (pq_test_rand(&rng) % 4)
            h &= ~(uint64_t)15;
        if (pq_test_rand(&rng) % 8 == 0)
            h = UINT64_MAX - (pq_test_rand(&rng) % 8192); /* positions that wrap 2^64 */
        uint64_t t;
        switch (pq_test_rand(&rng) % 5) {
        case 0: t = pq_test_rand(&rng); break;
        case 1: t = h + (pq_test_rand(&rng) % (cap + 64)); break;
        default: t = h + ((pq_test_rand(&rng) % (cap / 16 + 2)) * 16); break;
        }
        atomic_store(&r.ctl->head, h);
        atomic_store(&r.ctl->tail, t);
        /* Random record headers all over the data area; some placed at
         * the positions a walk from h would reach. */
        for (uint64_t off = 0; off < cap; off += 16) {
            pq_record_header *rec = (pq_record_header *)(r.data + off);
            if (pq_test_rand(&rng) % 3 == 0) {
                atomic_store(&rec->ctl, random_ctl(&rng, h + ((off - (h & (cap - 1))) & (cap - 1)), cap));
                atomic_store(&rec->owner, pq_test_rand(&rng) % 4 ? 0 : pq_test_rand(&rng));
            } else {
                for (int k = 0; k < 16; k++)
                    r.data[off + k] = (uint8_t)pq_test_rand(&rng);
            }
        }
        /* And a chain from h: headers whose sizes link up. Half the time
         * a well-formed ring (right tags, known states, records that do
         * not cross the end, tail at a record boundary) with at most one
         * corrupted word, so that the walk goes deep. */
        uint64_t p = h;
        if (it % 2 == 0 && (h & 15) == 0) {
            int nrec = 1 + (int)(pq_test_rand(&rng) % 24);
            for (int k = 0; k < nrec && p - h < cap; k++) {
                pq_record_header *rec = (pq_record_header *)(r.data + (p & (cap - 1)));
                uint64_t room = cap - (p & (cap - 1));
                uint64_t len = pq_test_rand(&rng) % 200;
                uint64_t state = 2; /* COMMITTED */
                uint64_t x = pq_test_rand(&rng) % 16;
                if (x == 0)
                    state = 1; /* CLAIMED */
                else if (x == 1)
                    state = 4; /* ABANDONED */
                if (pq_ring_record_size(len) > room || x == 2) {
                    len = room - 16; /* PADDING to the end */
                    state = 3;
                }
                if (p - h + pq_ring_record_size(len) > cap)
                    break;
                atomic_store(&rec->ctl, len | ((uint64_t)(x & 0xff) << 32) | (state << 40) |
                                            (((p >> 4) & 0xffff) << 48));
                p += pq_ring_record_size(len);
            }
            switch (pq_test_rand(&rng) % 4) {
            case 0: t = p; break;
            case 1: t = h + ((p - h) / 32) * 16; break; /* inside the chain */
            default: t = p; break;
            }
            atomic_store(&r.ctl->tail, t);
            if (pq_test_rand(&rng) % 3 == 0) {
                /* one corrupted word somewhere in [h, p) */
                uint64_t off = (h + (pq_test_rand(&rng) % (p - h + 16))) & (cap - 1) & ~(uint64_t)7;
                uint64_t v = pq_test_rand(&rng);
                if (pq_test_rand(&rng) % 2)
                    v = (v & 0xffffffffu) | (atomic_load((_Atomic uint64_t *)(r.data + (off & ~15ull))) &
                                             ~0xffffffffull); /* only the length */
                atomic_store((_Atomic uint64_t *)(r.data + off), v);
            }
        } else {
            for (int k = 0; k < 8 && (p & 15) == 0; k++) {
                pq_record_header *rec = (pq_record_header *)(r.data + (p & (cap - 1)));
                uint64_t ctl = random_ctl(&rng, p, cap);
                atomic_store(&rec->ctl, ctl);
                p += pq_ring_record_size(ctl & 0xffffffffu);
            }
        }

        /* The view caches the other side's cursor: usually start afresh,
         * sometimes keep what the last (unrelated) iteration cached. */
        int fresh = pq_test_rand(&rng) % 4 != 0;
        if (fresh)
            CHECK_EQ(pq_ring_open(&r, g.base, g.size), 0);
        /* A kept cache may lie beyond this iteration's (fuzzed) tail, which
         * a real tail, that only grows, never does: bound by either. */
        uint64_t bound = t - h;
        if (!fresh && r.tail_cache - h <= cap && r.tail_cache - h > bound)
            bound = r.tail_cache - h;
        uint32_t max = 1 + (uint32_t)(pq_test_rand(&rng) % 64);
        int rc = pq_ring_peek(&r, recs, max, &b);
        CHECK(rc >= 0 || rc == -EAGAIN || rc == -EINPROGRESS || rc == -ESTALE ||
              rc == PQ_ERR_CORRUPT);
        if (rc >= 0) {
            CHECK((uint32_t)rc == b.count);
            CHECK(b.count <= max);
            CHECK(b.head == h);
            CHECK(b.next - h <= cap);
            CHECK(b.next - h <= bound);
            for (int i = 0; i < rc; i++) {
                const uint8_t *pl = recs[i].payload;
                CHECK(pl >= r.data + PQ_RECORD_HEADER);
                CHECK(pl <= r.data + cap);
                CHECK((uint64_t)(r.data + cap - pl) >= recs[i].len);
                /* Touch every byte: ASan / the guard pages catch a stray. */
                volatile uint8_t sum = 0;
                for (uint32_t k = 0; k < recs[i].len; k++)
                    sum ^= pl[k];
                (void)sum;
            }
            returned += (uint64_t)rc;
            counts[0]++;
            if (pq_test_rand(&rng) % 2) {
                CHECK_EQ(pq_ring_consume(&r, &b), 0);
                CHECK(atomic_load(&r.ctl->head) == b.next);
            }
        } else if (rc == -EAGAIN) {
            counts[1]++;
            CHECK(h == t);
        } else if (rc == -EINPROGRESS) {
            counts[2]++;
        } else {
            counts[3]++;
        }
        /* Repair on the same garbage: a code, nothing else. The owner
         * words are random, so it may look at unrelated pids (kill 0 and
         * /proc only); it can only mark a CLAIMED head ABANDONED. */
        if (pq_test_rand(&rng) % 4 == 0) {
            int rr = pq_ring_repair_head(&r);
            CHECK(rr == 0 || rr == 1 || rr < 0);
        }
        /* Statistics on garbage must not trap either. */
        pq_ring_stats st;
        pq_ring_get_stats(&r, &st);
        (void)pq_ring_depth(&r);
    }
    printf("       peek fuzz: %d iterations: %d ok (%" PRIu64 " records), %d empty, %d in progress, "
           "%d stale/corrupt\n",
           iters, counts[0], returned, counts[1], counts[2], counts[3]);
    munmap(g.map, g.map_size);
    return 0;
}

/*
 * A corrupt tail that moved backwards under a view that cached a bigger
 * one: the walk must still end at tail. With capacity >= 1 MiB the tags
 * repeat every lap, so a ring full of padding chains round forever if the
 * walk overshoots tail (peek then never returns): run it in a child.
 */
static int test_tail_backwards(void)
{
    const uint64_t cap = 1u << 20;
    const size_t size = pq_ring_segment_size(cap);
    uint8_t *base = pq_test_shared(size);
    pq_ring r;
    CHECK(base != NULL);
    CHECK_EQ(pq_ring_create(base, size, cap, 0, NULL, 0), 0);
    CHECK_EQ(pq_ring_open(&r, base, size), 0);
    for (uint64_t p = 0; p < cap; p += 16) {
        pq_record_header *rec = (pq_record_header *)(r.data + p);
        atomic_store(&rec->ctl, (3ull << 40) | (((p >> 4) & 0xffff) << 48)); /* PADDING, len 0 */
    }
    atomic_store(&r.ctl->head, 0);
    atomic_store(&r.ctl->tail, 4096);
    pq_ring_record rec[4];
    pq_ring_batch b;
    CHECK_EQ(pq_ring_peek(&r, rec, 4, &b), 0); /* caches tail 4096 */
    CHECK_EQ(b.next, 4096);
    atomic_store(&r.ctl->tail, 32); /* corruption: tail went backwards */

    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int rc = pq_ring_peek(&r, rec, 4, &b);
        CHILD_CHECK(rc == PQ_ERR_CORRUPT || (rc >= 0 && b.next <= 4096));
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    munmap(base, size);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("test_segment\n");
    RUN(test_init_publish_check);
    RUN(test_validation_errors);
    RUN(test_ring_open_validation);
    RUN(test_fuzz_header);
    RUN(test_fuzz_peek);
    RUN(test_tail_backwards);
    return pq_test_result();
}
