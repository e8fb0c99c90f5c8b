"""The loops' io_uring futex waits (pyqueue/_aio_ring.py): that an await
parks on its loop's ring with no thread on this machine, that a fork does
not take the parent's waits away, that a kernel refusing io_uring (a
seccomp profile, as containers have) gets the waiter thread, that rings
of closed loops do not pile up. The semantics of the awaits themselves
run in both modes in tests/test_asyncio.py."""
import asyncio
import os
import threading
import time

import pytest

import pyqueue
import pyqueue.asyncio as aq
from pyqueue import _aio, _aio_ring
from tests import _aio_workers as workers


@pytest.fixture(autouse=True)
def _no_waiter_left():
    yield
    assert not _aio.registered()
    assert _aio._waiter.stop()
    assert _aio_ring._refused is None  # no test made this process give up its rings


def _closing(*handles):
    for h in handles:
        h.close()
        h.unlink()


async def _parked(call):
    """Start call() as a task and return it once it is registered (parked)."""
    task = asyncio.ensure_future(call())
    while not _aio.registered():
        await asyncio.sleep(0)
    return task


def _ring_fds():
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[io_uring]":
                fds.append(int(fd))
        except OSError:
            pass  # closed meanwhile (listdir's own fd)
    return fds


def test_an_await_parks_on_its_loops_ring_woken_by_another_process(ctx, procs, monkeypatch):
    """On this machine (Linux 6.7+, io_uring allowed) a waiting get is a
    ring registration, with no waiter thread: the put of another process
    wakes it through the ring (with the retry slice far beyond the test's
    timeouts, a missing wake-up is a timeout). Under fork the child starts
    while the parent is parked and closes its copy of the ring: the
    parent's wait is still there for the child's put."""
    monkeypatch.setattr(_aio, "SLICE_S", 120.0)
    monkeypatch.setattr(_aio, "WAIT_MODE", "auto")
    q = aq.Queue()
    try:
        async def main():
            task = await _parked(q.get)
            regs = _aio.registered()
            assert [type(r) for r in regs] == [_aio_ring.RingReg]
            assert not [t for t in threading.enumerate() if t.name == "pyqueue-aio-waiter"]
            p = procs.start(ctx, workers.put_range, q.sync, 7, 1)
            got = await asyncio.wait_for(task, 30)
            p.join(30)
            assert p.exitcode == 0
            return got

        assert asyncio.run(main()) == 7
        assert _aio_ring._refused is None
    finally:
        _closing(q)


def test_a_kernel_that_refuses_io_uring_gets_the_waiter_thread(spawn_ctx, procs):
    """A child whose seccomp filter refuses io_uring_setup (EPERM) awaits
    through the waiter thread, woken by the parent's put."""
    q = aq.Queue()
    out = pyqueue.Queue()
    try:
        p = procs.start(spawn_ctx, workers.async_get_without_io_uring, q, out)
        assert out.get(timeout=60) == "parked"
        q.sync.put("woken")
        value, thread, regs, refused = out.get(timeout=60)
        p.join(30)
        assert p.exitcode == 0
        assert value == "woken"
        assert thread and regs == ["_Reg"]
        assert refused is not None and refused.startswith("EPERM")
    finally:
        _closing(q, out)


def test_rings_of_closed_loops_do_not_pile_up():
    """asyncio.run after asyncio.run, each with a wait: the ring of a
    closed loop is closed when the next one opens, so a process holds a
    ring or two, not one per loop it ever ran."""
    q = aq.Queue()
    before = len(_ring_fds())
    try:
        async def one_wait():
            with pytest.raises(Exception):
                await q.get(timeout=0.01)
            assert len(_ring_fds()) <= before + 2

        for _ in range(30):
            asyncio.run(one_wait())
        assert len(_ring_fds()) <= before + 1
    finally:
        _closing(q)


def test_loops_in_two_threads_each_wait_on_their_own_ring():
    """Two threads, each running a loop that waits on the same queue: two
    rings, each woken by the put for its own coroutine."""
    q = aq.Queue()
    try:
        parked = threading.Barrier(3)
        results = {}

        def run(name):
            async def main():
                task = asyncio.ensure_future(q.get())
                while not any(r.fut.get_loop() is asyncio.get_running_loop()
                              for r in _aio.registered()):
                    await asyncio.sleep(0.001)
                ring = _aio_ring.ring_for(asyncio.get_running_loop())
                await asyncio.get_running_loop().run_in_executor(None, parked.wait, 30)
                return ring, await asyncio.wait_for(task, 30)
            results[name] = asyncio.run(main())

        threads = [threading.Thread(target=run, args=(n,)) for n in "ab"]
        for t in threads:
            t.start()
        parked.wait(30)
        q.sync.put(1)
        q.sync.put(2)
        for t in threads:
            t.join(60)
        (ra, va), (rb, vb) = results["a"], results["b"]
        assert ra is not None and rb is not None and ra is not rb
        assert sorted([va, vb]) == [1, 2]
    finally:
        _closing(q)


@pytest.mark.parametrize("limit", ["waits", "completions"])
def test_a_full_ring_sends_the_next_registrations_to_the_waiter_thread(monkeypatch, limit):
    """A loop's ring holds WAITS_MAX submitted waits, and room in its
    completion queue for each wait's completion and its cancel's (set to
    two waits here, either way): awaits on a third queue register with the
    waiter thread instead, and every await is woken by its queue's put."""
    monkeypatch.setattr(_aio, "SLICE_S", 120.0)
    monkeypatch.setattr(_aio, "WAIT_MODE", "auto")
    if limit == "waits":
        monkeypatch.setattr(_aio_ring, "WAITS_MAX", 2)
    qs = [aq.Queue() for _ in range(3)]
    try:
        async def main():
            if limit == "completions":
                _aio_ring.ring_for(asyncio.get_running_loop()).cq_room = 4
            tasks = []
            for q in qs:  # one by one: the first two fill the ring
                tasks.append(asyncio.ensure_future(q.get()))
                while len(_aio.registered()) < len(tasks):
                    await asyncio.sleep(0)
            kinds = sorted(type(r).__name__ for r in _aio.registered())
            for i, q in enumerate(qs):
                q.sync.put(i)
            return kinds, await asyncio.wait_for(asyncio.gather(*tasks), 30)

        kinds, got = asyncio.run(main())
        assert kinds == ["RingReg", "RingReg", "_Reg"]
        assert got == [0, 1, 2]
    finally:
        _closing(*qs)


def test_registrations_share_a_wait_only_on_the_same_handle():
    """Two registrations on the same event address and value share one
    ring wait only when they come through the same handle: a directory log
    closed under a wait unmaps its event while the kernel's wait stays
    queued on the old file's word, and another segment mapped later at the
    same address, whose event starts at the same value, must not join that
    wait (its wakes would never complete it). Driven through the ring
    itself: where the kernel maps a segment is not the test's to choose."""
    from pyqueue import _core
    from pyqueue.asyncio import _READABLE
    q = aq.Queue()
    try:
        async def main():
            ring = _aio_ring.ring_for(asyncio.get_running_loop())
            ev = q.sync._event_address(_READABLE)
            seq = _core._aio_seq(ev)
            far = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 60 * 10**9
            one, other = object(), object()
            got = [ring.register(ev, seq, far, h) for h in (one, other, one)]
            waits = [reg.wait for reg, _fut in got]
            for reg, _fut in got:
                ring.unregister(reg)
            return waits

        waits = asyncio.run(main())
        assert waits[0] is waits[2] and waits[0] is not waits[1]
    finally:
        _closing(q)


def test_a_directory_log_closed_under_an_await_wakes_it_at_once(tmp_path, monkeypatch):
    """A directory log's close() unmaps its event: it first wakes the
    parks of this process's coroutines registered on it (a loop's ring
    wait outlives the mapping), so they meet the close now, not at their
    slice (set far beyond the test's timeouts here)."""
    monkeypatch.setattr(_aio, "SLICE_S", 120.0)

    async def main():
        log = aq.Log(path=str(tmp_path / "dir"), partitions=1)
        reads = [asyncio.ensure_future(log.read(0, 0, timeout=300)) for _ in range(2)]
        while len(_aio.registered()) < 2:
            await asyncio.sleep(0.001)
        log.close()
        for r in reads:
            with pytest.raises(ValueError):
                await asyncio.wait_for(r, 30)

    asyncio.run(main())


def test_a_loop_closed_under_a_waiting_coroutine_leaves_no_wait(monkeypatch):
    """A loop closed with a coroutine still parked on its ring (no
    asyncio.run to cancel it): its timers never run again. The ring holds
    the coroutine's future weakly, so the parked task is collected; its
    coroutine's unregistration gives the shared waiter count back and
    closes the ring, whose loop is closed."""
    import gc
    monkeypatch.setattr(_aio, "WAIT_MODE", "auto")
    q = aq.Queue()
    try:
        loop = asyncio.new_event_loop()
        task = loop.create_task(q.get())

        async def until_registered():
            while not _aio.registered():
                await asyncio.sleep(0.001)

        loop.run_until_complete(until_registered())
        assert q.stats()["waiting_consumers"] == 1
        ring = _aio_ring.ring_for(loop)
        loop.close()
        del task
        gc.collect()  # the task, parked for ever: collected, its coroutine closed
        assert q.stats()["waiting_consumers"] == 0
        assert ring.closed
    finally:
        _closing(q)
