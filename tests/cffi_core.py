"""A test-only cffi binding of pyqueue's C core (csrc/).

The fuzz tests call the C functions directly on buffers they corrupt at
will, which the Cython binding does not allow. The module is built with
cffi's API mode from csrc/*.c into a cache directory keyed by a hash of the
sources, the declarations and the flags, so it is rebuilt whenever csrc/
changes and built once otherwise (several pytest processes may race: the
build is serialized by a lock file).

    from tests import cffi_core
    core = cffi_core.require()      # pytest.skip()s without cffi or a C compiler
    ffi, lib = core.ffi, core.lib

PYQUEUE_SANITIZE=1 builds it with AddressSanitizer + UBSan. The ASan runtime
must then be the first library of the process (CI runs Python with
LD_PRELOAD=$(gcc -print-file-name=libasan.so)); without it, loading the
module would kill the interpreter, so require() fails with a message
instead. PYQUEUE_CFFI_CACHE overrides the cache directory.
"""

import contextlib
import fcntl
import glob
import hashlib
import importlib.util
import io
import os
import shutil
import sys
import sysconfig
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
MODULE = "_pyqueue_core_cffi"

# What the fuzz tests need of pq_segment.h and pq_ring.h. Atomic fields are
# declared as plain integers of the same size (cffi checks sizes and
# offsets against the real headers when it compiles); the structs are
# partial ("...;") so that fields not listed here (the claim mutex, the
# events) keep their real layout.
CDEF = r"""
#define PQ_SEGMENT_MAGIC ...
#define PQ_LAYOUT_VERSION ...
#define PQ_SEGMENT_HEADER_BYTES ...
#define PQ_ERR_NOT_PYQUEUE ...
#define PQ_ERR_VERSION ...
#define PQ_ERR_KIND ...
#define PQ_ERR_TRUNCATED ...
#define PQ_ERR_CORRUPT ...
#define PQ_RING_CTL_OFFSET ...
#define PQ_RING_DATA_OFFSET ...
#define PQ_RECORD_HEADER ...
#define PQ_RECORD_ALIGN ...
#define PQ_RING_MIN_CAPACITY ...
#define PQ_RING_MAX_CAPACITY ...
#define PQ_CTL_TYPE_SHIFT ...
#define PQ_CTL_STATE_SHIFT ...
#define PQ_CTL_TAG_SHIFT ...
#define PQ_RING_SLOTS ...
#define PQ_SLOT_HELD_SHIFT ...

enum pq_kind { PQ_KIND_QUEUE = 1, PQ_KIND_TOPIC = 2, PQ_KIND_LOG = 3 };
enum pq_segment_state { PQ_SEGMENT_INITIALIZING = 0, PQ_SEGMENT_READY = 1 };
enum pq_ring_param { PQ_RING_PARAM_CAPACITY = 0, PQ_RING_PARAM_MAXSIZE = 1,
                     PQ_RING_PARAM_USER0 = 2, PQ_RING_NPARAMS = 6, ... };
enum pq_record_state { PQ_REC_CLAIMED = 1, PQ_REC_COMMITTED = 2,
                       PQ_REC_PADDING = 3, PQ_REC_ABANDONED = 4 };

typedef struct pq_segment_header {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t kind;
    uint64_t segment_size;
    uint64_t data_offset;
    uint64_t data_size;
    int32_t creator_pid;
    uint64_t creator_start_time;
    uint64_t created_unix_ns;
    uint32_t state;
    uint64_t params[16];
    ...;
} pq_segment_header;

typedef struct pq_record_header {
    uint64_t ctl;
    uint64_t owner;
} pq_record_header;

typedef struct pq_ring_slot {
    uint64_t owner;
    uint64_t taking;
    uint64_t taking_head;
    uint64_t taking_next;
    ...;
} pq_ring_slot;

typedef struct pq_ring_epoch {
    uint64_t start;
    uint64_t level;
} pq_ring_epoch;

typedef struct pq_ring_ctl {
    uint64_t tail;
    uint64_t tail_msgs;
    uint64_t claim_tail;
    uint64_t claim_msgs;
    uint64_t epoch;
    pq_ring_epoch epochs[...];
    uint64_t level_reserved[...];
    uint64_t dirty_levels;
    uint64_t head;
    uint64_t head_msgs;
    int64_t unfinished_tasks;
    uint64_t counters[8];
    pq_ring_slot slots[...];
    ...;
} pq_ring_ctl;

typedef struct pq_ring {
    pq_segment_header *hdr;
    pq_ring_ctl *ctl;
    uint8_t *data;
    uint64_t capacity;
    uint64_t mask;
    uint64_t maxsize;
    uint64_t max_payload;
    uint64_t reserved_cache;
    uint64_t head_cache;
    uint64_t tail_cache;
    int slot;
    uint32_t held;
    uint64_t slot_owner;
    unsigned slot_forks;
    uint64_t reserve_need;
    uint64_t span;
    unsigned nlevels;
    int trim_wanted;
    uint64_t ep_n;
    uint64_t ep_start;
    uint64_t ep_cap;
    unsigned ep_level;
    uint8_t *ep_base;
    uint64_t rd_seen;
    uint64_t rd_cur_start;
    uint64_t rd_cur_cap;
    uint64_t rd_start;
    uint64_t rd_end;
    uint64_t rd_cap;
    unsigned rd_level;
    uint8_t *rd_base;
    uint64_t rd_levels;
} pq_ring;

typedef struct pq_ring_record {
    uint64_t pos;
    const uint8_t *payload;
    uint32_t len;
    uint8_t type;
} pq_ring_record;

typedef struct pq_ring_batch {
    uint64_t head;
    uint64_t next;
    uint32_t count;
    uint32_t skipped;
} pq_ring_batch;

typedef struct pq_ring_stats {
    uint64_t enqueued, dequeued, rejected, dropped, abandoned;
    uint64_t depth, depth_bytes, capacity, maxsize;
    uint32_t waiting_producers, waiting_consumers;
    int64_t unfinished_tasks;
    uint64_t abandoned_taken;
} pq_ring_stats;

int pq_segment_check(const void *base, size_t size, uint32_t kind);
uint64_t pq_ring_segment_size(uint64_t capacity);
uint64_t pq_ring_growable_size(uint64_t capacity);
int pq_ring_trim(pq_ring *r);
uint64_t pq_ring_record_size(uint64_t len);
int pq_ring_create(void *base, size_t size, uint64_t capacity, uint64_t maxsize,
                   const uint64_t *user_params, int n_user_params);
int pq_ring_open(pq_ring *r, void *base, size_t size);
int pq_ring_claim(pq_ring *r, const uint32_t *lens, uint32_t n, uint64_t *pos_out);
uint8_t *pq_ring_payload(const pq_ring *r, uint64_t pos);
void pq_ring_commit(pq_ring *r, uint64_t pos, uint8_t type);
int pq_ring_peek(pq_ring *r, pq_ring_record *out, uint32_t max, pq_ring_batch *batch);
int pq_ring_consume(pq_ring *r, const pq_ring_batch *batch);
int pq_ring_take(pq_ring *r, const pq_ring_batch *batch);
void pq_ring_taken_done(pq_ring *r);
int pq_ring_reap_dead_consumers(pq_ring *r);
void pq_ring_release_slot(pq_ring *r);
int pq_ring_repair_head(pq_ring *r);
void pq_ring_get_stats(const pq_ring *r, pq_ring_stats *s);
uint64_t pq_ring_depth(const pq_ring *r);

/* pq_murmur2.h, pq_crc32c.h (the Log's partitioner and checksum). */
int32_t pq_murmur2(const void *key, size_t len);
uint32_t pq_kafka_partition(const void *key, size_t len, uint32_t num_partitions);
uint32_t pq_crc32c(uint32_t crc, const void *data, size_t len);
uint32_t pq_crc32c_sw(uint32_t crc, const void *data, size_t len);
uint32_t pq_crc32c_hw(uint32_t crc, const void *data, size_t len);
int pq_crc32c_hw_available(void);

/* Test helpers (below). */
uint8_t *pqt_alloc(size_t size, int exact);
void pqt_free(uint8_t *base, size_t size, int exact);
"""

# Buffers for the fuzz, 16-aligned (as mappings are): either allocated to
# exactly `size` bytes (under ASan, which then reports any access past
# them), or placed right before a PROT_NONE page (end rounded up to 16
# bytes to keep the alignment), so that a read past the end faults instead
# of reading a neighbour's memory.
SOURCE = r"""
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pq_segment.h"
#include "pq_ring.h"
#include "pq_murmur2.h"
#include "pq_crc32c.h"

static size_t pqt_map_size(size_t size, size_t page)
{
    return ((size + 15) / 16 * 16 + page - 1) / page * page + page;
}

static uint8_t *pqt_alloc(size_t size, int exact)
{
    if (exact) {
        void *p = NULL;
        /* 16-aligned like a mapping (pq_ring_open insists). */
        if (posix_memalign(&p, 16, size ? size : 1) != 0)
            return NULL;
        memset(p, 0, size ? size : 1);
        return p;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t map_size = pqt_map_size(size, page);
    uint8_t *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return NULL;
    if (mprotect(map + map_size - page, page, PROT_NONE) != 0) {
        munmap(map, map_size);
        return NULL;
    }
    return map + map_size - page - (size + 15) / 16 * 16;
}

static void pqt_free(uint8_t *base, size_t size, int exact)
{
    if (base == NULL)
        return;
    if (exact) {
        free(base);
        return;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t map_size = pqt_map_size(size, page);
    uint8_t *end = base + (size + 15) / 16 * 16 + page;
    munmap(end - map_size, map_size);
}
"""

SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fno-omit-frame-pointer"]


def sanitize_requested():
    return os.environ.get("PYQUEUE_SANITIZE", "") not in ("", "0")


def asan_runtime_loaded():
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


def _sources():
    return sorted(glob.glob(os.path.join(CSRC, "*.c")))


def _flags(sanitize):
    compile_args = ["-std=gnu11", "-pthread", "-g"]
    link_args = ["-pthread"]
    if sanitize:
        compile_args += ["-O1"] + SANITIZE_FLAGS
        link_args += SANITIZE_FLAGS
    else:
        compile_args += ["-O2"]
    return compile_args, link_args


def _key(sanitize):
    h = hashlib.sha256()
    for path in _sources() + sorted(glob.glob(os.path.join(CSRC, "*.h"))):
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    h.update(CDEF.encode())
    h.update(SOURCE.encode())
    h.update(repr(_flags(sanitize)).encode())
    h.update(repr((sys.version, sysconfig.get_config_var("EXT_SUFFIX"))).encode())
    try:
        import cffi

        h.update(cffi.__version__.encode())
    except ImportError:
        pass
    return h.hexdigest()[:20]


def cache_root():
    root = os.environ.get("PYQUEUE_CFFI_CACHE")
    if not root:
        root = os.path.join(tempfile.gettempdir(), "pyqueue-cffi-%d" % os.getuid())
    os.makedirs(root, mode=0o700, exist_ok=True)
    return root


class CompilerMissing(RuntimeError):
    pass


def _compiler_available():
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    return bool(cc) and shutil.which(cc[0]) is not None


def _find_built(directory):
    for path in glob.glob(os.path.join(directory, MODULE + "*.so")):
        return path
    return None


def build(sanitize=None):
    """Build (or find in the cache) the module; return the path of the .so."""
    import cffi  # ImportError: the caller skips

    if sanitize is None:
        sanitize = sanitize_requested()
    root = cache_root()
    final = os.path.join(root, _key(sanitize))
    built = _find_built(final)
    if built:
        try:
            os.utime(final)  # in use: not for _prune
        except OSError:
            pass
        return built
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = _find_built(final)  # another process may have built it meanwhile
        if built:
            return built
        if not _compiler_available():
            raise CompilerMissing("no C compiler to build the cffi binding of csrc/")
        compile_args, link_args = _flags(sanitize)
        ffi = cffi.FFI()
        ffi.cdef(CDEF)
        ffi.set_source(MODULE, SOURCE, sources=_sources(), include_dirs=[CSRC],
                       extra_compile_args=compile_args, extra_link_args=link_args)
        tmp = tempfile.mkdtemp(prefix="build-", dir=root)
        try:
            out = io.StringIO()
            with warnings.catch_warnings(), contextlib.redirect_stdout(out):
                warnings.simplefilter("ignore")  # distutils/setuptools deprecations
                so = ffi.compile(tmpdir=tmp, verbose=False)
            staged = tmp + ".out"
            os.makedirs(staged)
            shutil.copy2(so, staged)
            os.rename(staged, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(root, keep=final)
        return _find_built(final)


def _prune(root, keep, max_age_s=7 * 86400):
    """Remove builds of other csrc/ versions not used for a week."""
    now = time.time()
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if path == keep or not os.path.isdir(path):
            continue
        try:
            if now - os.stat(path).st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


class Core:
    """The loaded module: ffi, lib, and a few conveniences."""

    def __init__(self, module, sanitize):
        self.ffi = module.ffi
        self.lib = module.lib
        self.sanitize = sanitize

    # Layout, from the compiler (not hard-coded).
    def header_offset(self, field):
        return self.ffi.offsetof("pq_segment_header", field)

    def ctl_offset(self, field):
        return self.lib.PQ_RING_CTL_OFFSET + self.ffi.offsetof("pq_ring_ctl", field)

    def record_ctl(self, pos, length, typ, state):
        lib = self.lib
        return ((length & 0xFFFFFFFF) | ((typ & 0xFF) << lib.PQ_CTL_TYPE_SHIFT)
                | ((state & 0xFF) << lib.PQ_CTL_STATE_SHIFT)
                | (((pos >> 4) & 0xFFFF) << lib.PQ_CTL_TAG_SHIFT))

    def alloc(self, size):
        """A zeroed buffer of `size` bytes with nothing readable right after
        it (see SOURCE); freed when the returned cdata is collected."""
        exact = 1 if self.sanitize else 0
        p = self.lib.pqt_alloc(size, exact)
        if p == self.ffi.NULL:
            raise MemoryError(size)
        return self.ffi.gc(p, lambda p, size=size, exact=exact: self.lib.pqt_free(p, size, exact))


_loaded = None


def load():
    """Build if needed and import the module. Raises ImportError (no cffi),
    CompilerMissing (no C compiler), or RuntimeError (sanitizer build without the ASan
    runtime preloaded)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    sanitize = sanitize_requested()
    if sanitize and not asan_runtime_loaded():
        raise RuntimeError(
            "PYQUEUE_SANITIZE=1 builds the cffi binding with ASan, which needs the ASan "
            "runtime preloaded: run Python with LD_PRELOAD=$(gcc -print-file-name=libasan.so)")
    path = build(sanitize)
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _loaded = Core(module, sanitize)
    return _loaded


def require():
    """load(), or pytest.skip when cffi or a C compiler is missing."""
    import pytest

    if importlib.util.find_spec("cffi") is None:
        pytest.skip("cffi is not installed")
    find = importlib.util.find_spec
    if find("setuptools") is None and find("distutils") is None:
        pytest.skip("cffi needs setuptools to compile (pip install setuptools)")
    try:
        return load()
    except CompilerMissing as exc:
        pytest.skip(str(exc))
