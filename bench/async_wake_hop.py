"""The wake-up hop of pyqueue.asyncio's waiter, two ways, in one run
(docs/design.md, "asyncio": why call_soon_threadsafe).

    python -m bench.async_wake_hop [N]

A producer process bumps a shared futex word every 0.2 ms (after the
waiter has read it) and the time from the bump to a callback on the event
loop is measured:

  A  the design as built: a Python thread parked in
     pyqueue._core._aio_wait (GIL released), then
     loop.call_soon_threadsafe(callback);
  B  the alternative: a C function (compiled here with `cc`, called
     through ctypes, so the GIL stays released for the whole call) parks
     on the word and writes an eventfd the loop watches (add_reader).

Only the hop is measured (the coroutine's own step after the callback is
the same in both). Three interleaved runs; p50/p99 of each.
"""
import os
import subprocess
import tempfile

C_SOURCE = r"""
#define _GNU_SOURCE
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdatomic.h>
/* Park on *w while it holds expected (shared futex), then write 1 to fd. */
int wait_and_signal(uint32_t *w, uint32_t expected, int fd)
{
    while (atomic_load((_Atomic uint32_t *)w) == expected)
        syscall(SYS_futex, w, FUTEX_WAIT, expected, NULL, NULL, 0);
    uint64_t one = 1;
    return (int)write(fd, &one, 8);
}
int bump_and_wake(uint32_t *w)
{
    atomic_fetch_add((_Atomic uint32_t *)w, 1);
    return (int)syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
}
"""


def _build() -> str:
    d = tempfile.mkdtemp(prefix="pq-wakehop-")
    c, so = os.path.join(d, "wake.c"), os.path.join(d, "libwake.so")
    with open(c, "w") as f:
        f.write(C_SOURCE)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", so, c], check=True)
    return so


import asyncio, ctypes, mmap, os, struct, sys, threading, time
from pyqueue import _core
_SO = _build()
lib = ctypes.CDLL(_SO)
lib.wait_and_signal.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int]
lib.bump_and_wake.argtypes = [ctypes.c_void_p]
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
mm = mmap.mmap(-1, 4096)
word = ctypes.c_uint32.from_buffer(mm, 0)
addr = ctypes.addressof(word)
now = time.monotonic_ns

def producer(ack_r):
    for _ in range(N):
        os.read(ack_r, 1)  # the waiter has read the word
        time.sleep(0.0002)
        struct.pack_into("<q", mm, 8, now())
        lib.bump_and_wake(addr)
    os._exit(0)

def run(variant):
    ack_r, ack_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        producer(ack_r)
    lat = []
    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if variant == "A":
            wake = _core._AioWakeWord()
            def thread():
                for _ in range(N):
                    seq = word.value
                    os.write(ack_w, b"x")
                    while True:
                        rc = _core._aio_wait([addr], [seq], wake, wake.load(), -1)
                        if word.value != seq:
                            break
                    loop.call_soon_threadsafe(cb)
            def cb():
                lat.append(now() - struct.unpack_from("<q", mm, 8)[0])
                if len(lat) == N:
                    done.set_result(None)
            threading.Thread(target=thread, daemon=True).start()
        else:
            efd = os.eventfd(0)
            def thread():
                for _ in range(N):
                    seq = word.value
                    os.write(ack_w, b"x")
                    lib.wait_and_signal(addr, seq, efd)
            got = [0]
            def cb():
                got[0] += os.eventfd_read(efd)  # writes coalesce: count them
                lat.append(now() - struct.unpack_from("<q", mm, 8)[0])
                if got[0] >= N:
                    loop.remove_reader(efd)
                    done.set_result(None)
            loop.add_reader(efd, cb)
            threading.Thread(target=thread, daemon=True).start()
        await done
    asyncio.run(main())
    os.waitpid(pid, 0)
    lat.sort()
    return lat[len(lat) // 2] / 1e3, lat[int(len(lat) * 0.99)] / 1e3

if __name__ == "__main__":
    print(f"load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, {N} samples per run")
    try:
        for rep in range(3):
            for v in ("A", "B"):
                p50, p99 = run(v)
                name = "A call_soon_threadsafe" if v == "A" else "B C waiter + eventfd"
                print(f"{name:24} p50 {p50:6.1f} us  p99 {p99:7.1f} us")
    finally:
        os.unlink(_SO)
        os.unlink(os.path.join(os.path.dirname(_SO), "wake.c"))
        os.rmdir(os.path.dirname(_SO))
