# pyright: strict
"""Typed use of pyqueue's whole public API.

Type-checked by the typing stage of .ci/run (`mypy --strict` and pyright in
strict mode, tests/typing/mypy.ini and tests/typing/pyrightconfig.json),
and run by tests/test_typing_usage.py, so the types it asserts are the ones
the calls return. Every name of pyqueue.__all__ and pyqueue.asyncio.__all__,
pyqueue.metrics' collector and functions, and every public method and
property of their classes are used here.
"""
from __future__ import annotations

import os
import tempfile
import urllib.request
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Type

import pyqueue
from pyqueue import (CommitFailed, Consumer, CorruptRecord, DeadLetter, Delivery,
                     DeliveryExpired, Empty, Full, JoinableQueue, LockTimeout, Log,
                     MessageTooLarge, OffsetOutOfRange, PoisonRecord, PyQueueError, Queue,
                     Record, SegmentMismatch, SegmentNotFound, SegmentNotOwned, SimpleQueue,
                     ShutDown, StreamProcessor, Subscription, Topic, UndecodableMessage,
                     WorkQueue)
from pyqueue import Executor, Pool, WorkerLost
from pyqueue.log import DirectoryLog, MemoryLog
from pyqueue.metrics import PyQueueCollector, exposition, families, serve
from pyqueue.stream import DeadRecord
from pyqueue.workqueue import Batch

if TYPE_CHECKING:
    from typing_extensions import assert_type
else:
    def assert_type(value, _type):
        return value


def use_queue() -> None:
    q: Queue[bytes] = Queue(maxsize=8, capacity_bytes=64 * 1024, overflow="reject")
    with q:
        q.put(b"a")
        q.put_nowait(b"b")
        assert_type(q.put_many([b"c", b"d"], timeout=1.0), int)
        assert_type(q.get(), bytes)
        assert_type(q.get_nowait(), bytes)
        many = q.get_many(max_messages=10, block=False)
        assert_type(many, List[bytes])
        assert many == [b"c", b"d"]
        assert_type(q.qsize(), int)
        assert_type(q.empty(), bool)
        assert_type(q.full(), bool)
        stats: Dict[str, int] = q.stats()
        assert stats["enqueued"] == 4
        name: str = q.name
        overflow: str = q.overflow
        assert overflow == "reject"
        code: int = q.overflow_code  # the C core's code of the policy
        assert code >= 0
        limit: Optional[int] = q.max_message_bytes
        sizes: Tuple[int, int, int] = (q.capacity_bytes, q.maxsize, q.inline_max)
        assert sizes[1] == 8 and limit is None
        again = Queue[bytes].open(name)
        assert_type(again, Queue[bytes])
        again.close()
        try:
            q.get(timeout=0.01)
        except Empty:
            pass
        else:
            raise AssertionError("Empty not raised")
        for _ in range(8):
            q.put(b"x")
        try:
            q.put(b"full")
        except Full:
            pass
        else:
            raise AssertionError("Full not raised")
        q.close()
        q.join_thread()
        q.cancel_join_thread()
        q.unlink()  # opened by name above: its name outlives close()
    try:
        Queue.open("pyqueue-typing-no-such-queue")
    except SegmentNotFound as e:
        assert isinstance(e, FileNotFoundError)
    else:
        raise AssertionError("SegmentNotFound not raised")


def use_queue_serializer() -> None:
    def dumps(obj: Dict[str, int]) -> bytes:
        return repr(sorted(obj.items())).encode()

    def loads(data: bytes) -> Dict[str, int]:
        return dict(eval(data.decode()))  # only our own dumps' output

    q: Queue[Dict[str, int]] = Queue(serializer=(dumps, loads), max_message_bytes=1024)
    with q:
        q.put({"a": 1})
        got = q.get(timeout=1.0)
        assert_type(got, Dict[str, int])
        assert got == {"a": 1}
        try:
            q.put({str(i): i for i in range(1000)})
        except MessageTooLarge as e:
            assert isinstance(e, ValueError)
        else:
            raise AssertionError("MessageTooLarge not raised")


def use_joinable_and_simple() -> None:
    jq: JoinableQueue[int] = JoinableQueue()
    with jq:
        jq.put(1)
        assert_type(jq.get(), int)
        jq.task_done()
        jq.join()
    plain: Queue[int] = Queue()
    try:
        JoinableQueue[int].open(plain.name)
    except SegmentMismatch:
        pass
    else:
        raise AssertionError("SegmentMismatch not raised")
    plain.close()
    sq: SimpleQueue[str] = SimpleQueue()
    sq.put("x")
    assert_type(sq.get(), str)
    assert_type(sq.empty(), bool)
    sq.close()
    try:
        sq.put("closed")
    except OSError:
        pass
    else:
        raise AssertionError("OSError not raised")


def use_topic() -> None:
    with Topic[str](capacity_bytes=64 * 1024, mode="lossless") as topic:
        sub = topic.subscribe("latest")
        assert_type(sub, Subscription[str])
        topic.publish("hello")
        assert_type(topic.publish_many(["a", "b"]), int)
        assert_type(sub.get(timeout=1.0), str)
        assert_type(sub.get_many(max_messages=10), List[str])
        lag: int = sub.lag
        lost: int = sub.lost
        bad: int = sub.undecodable
        assert (lag, lost, bad) == (0, 0, 0)
        topic.publish("it")
        first: Iterator[str] = iter(sub)
        assert next(first) == "it"
        assert_type(topic.mode, str)
        topic_sizes: Tuple[int, int, int] = (topic.capacity_bytes, topic.max_message_bytes,
                                             topic.mode_code)
        assert topic_sizes[0] >= 64 * 1024 and topic_sizes[1] > 0
        assert_type(topic.stats(), Dict[str, int])
        other = Topic[str].open(topic.name)
        assert_type(other, Topic[str])
        other.close()
        with sub as same_sub:
            assert_type(same_sub, Subscription[str])
        assert sub.closed
        try:
            sub.get(block=False)
        except ValueError:
            pass
        else:
            raise AssertionError("ValueError not raised")
        topic.unlink()


def use_log(tmp: str) -> None:
    log: Log[Dict[str, int]] = Log(partitions=2, retention_bytes=64 * 1024)
    with log:
        part, off = log.append({"n": 1}, key="user-1", headers={"h": b"v"})
        offsets: List[Tuple[int, int]] = log.append_many([{"n": 2}, {"n": 3}], key=b"user-1")
        assert offsets[0] == (part, off + 1)
        recs = log.read(part, off, max_records=10, timeout=0)
        assert_type(recs, List[Record])
        rec = recs[0]
        assert (rec.partition, rec.offset, rec.key, rec.headers) == (part, off, b"user-1",
                                                                      {"h": b"v"})
        stamp: int = rec.timestamp
        assert stamp > 0 and rec.value == {"n": 1}
        assert_type(log.partition_for("user-1"), int)
        assert_type(log.start_offset(part), int)
        assert_type(log.end_offset(part), int)
        assert_type(log.partitions, int)
        assert_type(log.max_record_bytes, int)
        raw: bool = log.raw_values  # True: values come back encoded (RawValue)
        assert raw is False
        try:
            log.read(part, 1000)
        except OffsetOutOfRange as e:
            assert (e.partition, e.offset, e.start_offset, e.end_offset) == (part, 1000, 0, 3)
        else:
            raise AssertionError("OffsetOutOfRange not raised")
        use_consumer(log, part)
        assert_type(log.groups(), List[str])
        assert_type(log.group_offsets("g"), Dict[int, Dict[str, Any]])
        assert_type(log.group_members("g"), List[Dict[str, Any]])
        log.delete_group("g")
        try:
            log.group_offsets("g")
        except KeyError:
            pass
        else:
            raise AssertionError("KeyError not raised")
        assert_type(log.enforce_retention(), int)
        assert log.path is None
        reopened = Log.open(log.name)
        reopened.close()
        if isinstance(log, MemoryLog):  # what Log() makes without a path
            kept_ms: Optional[int] = log.retention_ms
            ring: int = log.capacity_bytes
            assert kept_ms is None and ring > 0
            log.unlink()
        else:
            raise AssertionError("not a MemoryLog")
    disk: Log[bytes] = Log(path=os.path.join(tmp, "events"), fsync="never")
    disk.append(b"on disk")
    assert disk.path is not None
    assert isinstance(disk, DirectoryLog)
    segment: int = disk.segment_bytes
    assert segment > 0 and disk.name == disk.path
    disk.close()
    with Log.open(os.path.join(tmp, "events")) as again:
        assert again.read(0, 0)[0].value == b"on disk"


def use_consumer(log: Log[Any], part: int) -> None:
    consumer: Consumer = log.consumer("g", auto_offset_reset="earliest")
    with consumer:
        records = consumer.poll(max_records=100, timeout=1.0)
        assert_type(records, List[Record])
        assert_type(consumer.assignment(), List[int])
        assert_type(consumer.position(part), int)
        consumer.commit()
        consumer.commit({part: consumer.position(part)})
        assert_type(consumer.committed(part), Optional[int])
        consumer.seek(part, 0)
        consumer.seek_to_beginning()
        consumer.seek_to_end([part])
        assert_type(consumer.lag(), Dict[int, int])
        assert_type(consumer.group, str)
        assert_type(consumer.member_id, Optional[int])
        assert_type(consumer.generation, Optional[int])
        assert_type(consumer.skipped, int)
        try:
            consumer.commit({part: -1})
        except ValueError:
            pass
        else:
            raise AssertionError("ValueError not raised")
    direct = Consumer(log, "g2", auto_commit=True, auto_commit_interval=1.0,
                      max_poll_interval=60.0)
    direct.close()
    log.delete_group("g2")


def use_workqueue() -> None:
    dlq: WorkQueue[Any] = WorkQueue(capacity_bytes=256 * 1024)
    wq: WorkQueue[str] = WorkQueue(dead_letter=dlq, max_deliveries=2, visibility_timeout=30.0)
    with dlq, wq:
        mid: int = wq.put("job", key="k1")
        assert wq.put_nowait("job again", key="k1") == mid  # deduplicated
        d = wq.get(timeout=1.0)
        assert_type(d, Delivery[str])
        assert_type(d.value, str)
        assert (d.id, d.delivery_count, d.redelivered_because) == (mid, 1, None)
        enqueued: float = d.enqueued_at
        assert enqueued > 0
        d.extend(10.0)
        d.ack()
        assert_type(d.settled, Optional[str])
        try:
            d.ack()
        except DeliveryExpired:
            pass
        else:
            raise AssertionError("DeliveryExpired not raised")
        wq.put("poison", delay=0.0)
        with wq.get_nowait() as held:
            held.nack(delay=0.0, error="try again")
        wq.get(timeout=1.0).reject("bad input")
        letters = dlq.dead_letters()
        assert_type(letters, List[DeadLetter])
        letter = letters[0]
        text: str = letter.reason
        assert text.startswith("rejected") and letter.queue == wq.name
        assert (letter.attempts, letter.raw) == (2, None)
        last_error: Optional[str] = letter.last_error
        lettered_at: float = letter.dead_lettered_at
        assert last_error == "bad input" and lettered_at >= letter.enqueued_at
        assert_type(dlq.requeue(to=wq), int)
        assert_type(wq.qsize(), int)
        assert_type(wq.empty(), bool)
        assert_type(wq.stats(), Dict[str, Any])
        assert_type(wq.dead_letter, Optional[WorkQueue[Any]])
        limits: Tuple[int, int, float, Optional[int], float, int, int] = (
            wq.capacity_bytes, wq.max_in_flight, wq.visibility_timeout, wq.max_deliveries,
            wq.dedup_window, wq.dedup_keys, wq.max_message_bytes)
        assert limits[3] == 2
        dead_waits: Tuple[float, float] = (wq.dead_letter_timeout, wq.dead_letter_retry)
        assert min(dead_waits) > 0
        same = WorkQueue[str].open(wq.name)
        assert_type(same, WorkQueue[str])
        same.close()
        try:
            wq.get(block=False).ack()
            wq.get(block=False)
        except Empty:
            pass
        else:
            raise AssertionError("Empty not raised")
        wq.unlink()
        dlq.unlink()


def use_workqueue_batch() -> None:
    dlq: WorkQueue[Any] = WorkQueue()
    wq: WorkQueue[int] = WorkQueue(dead_letter=dlq)
    with dlq, wq:
        ids = wq.put_many([1, 2, 3, 4], keys=["a", "b", None, None], delay=0.0)
        assert_type(ids, List[int])
        batch = wq.get_many(max_messages=10, timeout=1.0)
        assert_type(batch, Batch)
        values: List[Any] = batch.values
        assert len(batch) == 4 and values == [1, 2, 3, 4] and batch.ids == ids
        counts: List[int] = batch.delivery_counts
        put_at: List[float] = batch.enqueued_at
        why: List[Optional[str]] = batch.redelivered_because
        assert counts == [1] * 4 and min(put_at) > 0 and why == [None] * 4
        batch.extend(10.0, [0])
        batch.ack([0])
        batch.nack([1], delay=0.0, error="again")
        batch.reject([2], reason="bad")
        batch.ack()
        settled: List[Optional[str]] = batch.settled
        assert settled == ["acked", "nacked", "rejected", "acked"]
        again = wq.get(timeout=1.0)
        assert (again.value, again.delivery_count) == (2, 2)
        again.ack()
        assert [d.reason for d in dlq.dead_letters()] == ["rejected: bad"]
        wq.unlink()
        dlq.unlink()


def _double(n: int) -> int:
    return n * 2


def use_stream_processor() -> None:
    source: WorkQueue[int] = WorkQueue()
    sink: Queue[int] = Queue()
    with source, sink:
        source.put(21)
        with StreamProcessor(source, _double, sink=sink, workers=1, processes=False,
                             handle_signals=False) as sp:
            assert sink.get(timeout=10.0) == 42
            assert_type(sp.worker_pids(), List[int])
        stats = sp.stats()
        assert stats["processed"] == 1
        assert_type(sp.join(timeout=1.0), bool)
        assert_type(sp.stop(timeout=1.0), bool)
        source.unlink()
    source2: WorkQueue[int] = WorkQueue()
    sink2: Queue[int] = Queue()
    with source2, sink2:
        sp2 = StreamProcessor(source2, _double, sink=sink2, workers=1, processes=False,
                              handle_signals=False)
        assert_type(sp2.start(), StreamProcessor)
        source2.put(1)
        assert sink2.get(timeout=10.0) == 2
        sp2.stop_nowait()  # the workers take nothing more
        assert sp2.join(timeout=10.0)
        sp3 = StreamProcessor(source2, _double, sink=sink2, workers=1, processes=False,
                              handle_signals=False).start()
        source2.put(2)
        sp3.shutdown(immediate=False)  # shuts source2 down: drained, then stopped
        assert sp3.join(timeout=10.0) and source2.is_shutdown
        assert sink2.get(timeout=1.0) == 4
        source2.unlink()
    rec = DeadRecord(0, 1, None, None, "ValueError: x")
    assert rec.error.startswith("ValueError")


def use_pool() -> None:
    # (builtins as tasks: this file runs under runpy, its functions do not pickle)
    with Pool(1, context="fork", max_task_retries=1) as pool:
        out: List[int] = pool.map(abs, [-1, -2], chunksize=1)
        assert out == [1, 2]
        r = pool.apply_async(abs, (-3,))
        assert r.get(timeout=30.0) == 3 and r.ready() and r.successful()
        assert list(pool.imap(abs, [-4])) == [4]
        assert sorted(pool.imap_unordered(abs, [-5, -6])) == [5, 6]
        assert pool.starmap(pow, [(2, 3)]) == [8]
        assert pool.map_async(abs, [-7]).get(timeout=30.0) == [7]
        n: int = pool.apply(len, ("abc",))
        assert n == 3
        assert pool.starmap_async(pow, [(3, 2)]).get(timeout=30.0) == [9]
    closing = Pool(1, context="fork")
    closing.close()
    closing.join()
    stopped = Pool(1, context="fork")
    stopped.terminate()
    stopped.join()
    with Executor(1, mp_context="fork") as ex:
        f = ex.submit(abs, -8)
        assert f.result(timeout=30.0) == 8
        assert list(ex.map(abs, [-9], timeout=30.0, chunksize=1)) == [9]
        ex.shutdown(wait=True, cancel_futures=False)
    err = WorkerLost("worker pid 1 killed by SIGKILL", pid=1, exitcode=-9, attempts=3)
    assert_type(err.attempts, int)
    assert_type(err.pid, Optional[int])
    assert isinstance(err, PyQueueError)


def use_errors() -> None:
    errors: List[PyQueueError] = [
        SegmentNotFound("x"), SegmentMismatch("x"), SegmentNotOwned("x"), MessageTooLarge("x"),
        OffsetOutOfRange("x", partition=0, offset=5, start_offset=0, end_offset=3),
        CommitFailed("x", partitions=[1, 2]),
        CorruptRecord("x", path=None, position=0, partition=0, offset=1),
        PoisonRecord("x", partition=0, offset=1, type_code=3, raw=b"?", cause=None),
        DeliveryExpired("x"),
        LockTimeout("x", pid=1, tid=1, state="T (stopped)", waited=1.0),
        UndecodableMessage("x", position=3, raw=b"?"),
    ]
    lost: Tuple[int, ...] = CommitFailed("x", [1]).partitions
    poison = PoisonRecord("x", partition=2, offset=7)
    where: Tuple[Optional[int], Optional[int]] = (poison.partition, poison.offset)
    waited: Optional[float] = LockTimeout("x", waited=0.5).waited
    assert len(errors) == 11 and lost == (1,) and where == (2, 7) and waited == 0.5
    assert isinstance(LockTimeout("x"), TimeoutError)


def use_metrics() -> None:
    q: Queue[bytes] = Queue()
    with q:
        q.put(b"m")
        collector = PyQueueCollector(handles=[q])
        rows, errors = collector.snapshot()
        assert_type(rows, List[Dict[str, Any]])
        assert_type(errors, List[Tuple[str, str]])
        assert rows[0]["kind"] == "queue" and rows[0]["stats"]["depth"] == 1 and errors == []
        assert collector.describe() == []
        collected: List[Any] = list(collector.collect())
        assert len(families(rows, errors)) == len(collected) > 0
        text = exposition(collector)
        assert_type(text, bytes)
        assert b"pyqueue_queue_depth" in text
        server, _thread = serve("127.0.0.1", 0, collector)
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
            with urllib.request.urlopen(url, timeout=30.0) as resp:
                assert b"pyqueue_queue_depth" in resp.read()
        finally:
            server.shutdown()
            server.server_close()


def use_shutdown(tmp: str) -> None:
    q: Queue[bytes] = Queue()
    q.put(b"a")
    q.shutdown()
    shut: bool = q.is_shutdown
    drained: List[bytes] = list(q)
    assert shut and drained == [b"a"]
    try:
        q.put(b"b")
    except ShutDown as e:
        err: PyQueueError = e
        assert isinstance(err, Exception)
    q.close()
    t: Topic[int] = Topic()
    sub = t.subscribe()
    t.shutdown(immediate=True)
    assert list(sub) == [] and t.is_shutdown
    sub.close()
    t.unlink()
    t.close()
    w: WorkQueue[int] = WorkQueue()
    w.shutdown(immediate=False)
    assert w.is_shutdown and [d.value for d in w] == []
    w.unlink()
    w.close()
    lg: Log[bytes] = Log(path=os.path.join(tmp, "shut"))
    lg.shutdown()
    assert lg.is_shutdown
    lg.close()


def main() -> None:
    """Run every use above (tests/test_typing_usage.py)."""
    use_queue()
    use_queue_serializer()
    use_joinable_and_simple()
    use_topic()
    with tempfile.TemporaryDirectory() as tmp:
        use_log(tmp)
        use_shutdown(tmp)
    use_workqueue()
    use_workqueue_batch()
    use_stream_processor()
    use_pool()
    use_errors()
    use_metrics()
    with tempfile.TemporaryDirectory() as tmp:
        use_asyncio(tmp)
    assert isinstance(pyqueue.__version__, str)
    use_connect()


def use_asyncio(tmp: str) -> None:
    import asyncio

    import pyqueue.asyncio as aq

    async def run() -> None:
        q: aq.Queue[bytes] = aq.Queue(maxsize=4)
        with q:
            await q.put(b"a")
            q.put_nowait(b"b")
            assert_type(await q.get(), bytes)
            assert_type(q.get_nowait(), bytes)
            await q.put(b"c", timeout=1.0)
            assert_type(await q.get_many(10, timeout=1.0), List[bytes])
            assert_type(q.qsize(), int)
            again = aq.Queue[bytes].open(q.name)
            assert_type(again, aq.Queue[bytes])
            again.close()
            try:
                await q.get(timeout=0.01)
            except Empty:
                pass
            else:
                raise AssertionError("an empty queue gave a message")
            q.unlink()
        jq: aq.JoinableQueue[int] = aq.JoinableQueue()
        with jq:
            await jq.put(1)
            assert_type(await jq.get(), int)
            jq.task_done()
            assert_type(await jq.join(timeout=1.0), bool)
            jq.unlink()
        wq: aq.WorkQueue[str] = aq.WorkQueue()
        with wq:
            assert_type(await wq.put("job", key="k1"), int)
            d = await wq.get(timeout=1.0)
            assert_type(d, aq.Delivery[str])
            assert_type(d.value, str)
            await d.ack()
            await wq.put("more")
            batch = await wq.get_many(10, timeout=1.0)
            assert_type(batch, aq.Batch)
            await batch.ack()
            wq.unlink()
        t: aq.Topic[str] = aq.Topic()
        with t:
            with t.subscribe("latest") as sub:
                await t.publish("m")
                assert_type(await sub.get(timeout=1.0), str)
            t.unlink()
        log: aq.Log[str] = aq.Log(path=os.path.join(tmp, "alog"), partitions=1)
        with log:
            with log.consumer("g") as c:
                log.append("r")
                records = await c.poll(timeout=1.0)
                assert_type(records, List[Record])
                assert [r.value for r in records] == ["r"]
            assert_type(await log.read(0, 0, timeout=0), List[Record])
        # connect(url).Log: the same calls on any backend (on Redis through
        # redis.asyncio: pyqueue/backends/redis/aio_log.py)
        ab = aq.connect("shm://")
        assert_type(ab, aq.AsyncBackend)
        assert ab.sync is pyqueue.connect("shm://")
        assert_type(ab.sync.Queue, Type[Queue[Any]])
        alog = ab.Log(partitions=1)
        with alog:
            alog.append("x")
            assert [r.value for r in await alog.read(0, 0, timeout=0)] == ["x"]
            alog.unlink()
        await use_asyncio_sync_handles()

    asyncio.run(run())


async def use_asyncio_sync_handles() -> None:
    """from_sync and .sync of each pyqueue.asyncio class: the type
    parameter goes over both ways."""
    import pyqueue.asyncio as aq

    sq: Queue[bytes] = Queue()
    q = aq.Queue.from_sync(sq)
    assert_type(q, aq.Queue[bytes])
    with q:
        assert_type(q.sync, Queue[bytes])
        assert q.sync is sq and q.empty() and not q.full()
        assert_type(q.stats(), Dict[str, Any])
        sq.put(b"s")
        async for m in q:
            assert_type(m, bytes)
            assert m == b"s"
            break
    sjq: JoinableQueue[int] = JoinableQueue()
    jq = aq.JoinableQueue.from_sync(sjq)
    assert_type(jq, aq.JoinableQueue[int])
    assert_type(jq.sync, JoinableQueue[int])
    jq.close()

    st: Topic[str] = Topic()
    t = aq.Topic.from_sync(st)
    assert_type(t, aq.Topic[str])
    with t:
        assert_type(t.sync, Topic[str])
        sub = aq.Subscription.from_sync(st.subscribe("latest"))
        assert_type(sub, aq.Subscription[str])
        with sub:
            assert_type(sub.sync, Subscription[str])
            await t.publish("x")
            st.publish("y")
            assert_type(sub.get_nowait(), str)
            assert_type(await sub.get_many(10, timeout=1.0), List[str])
            counts: Tuple[int, int] = (sub.lag, sub.lost)
            assert counts == (0, 0)
        t.unlink()

    swq: WorkQueue[int] = WorkQueue()
    wq = aq.WorkQueue.from_sync(swq)
    assert_type(wq, aq.WorkQueue[int])
    with wq:
        assert_type(wq.sync, WorkQueue[int])
        for i in (1, 2, 3):
            await wq.put(i)
        d = wq.get_nowait()
        assert_type(d.sync, Delivery[int])
        put_at: float = d.enqueued_at
        why: Optional[str] = d.redelivered_because
        assert put_at > 0 and why is None
        await d.extend(10.0)
        await d.nack(delay=0.0, error="again")
        assert d.settled == "nacked"
        await (await wq.get(timeout=1.0)).reject("bad")
        async with await wq.get(timeout=1.0) as held:  # acked on leaving
            assert_type(held, aq.Delivery[int])
        await wq.put(4)
        batch = await wq.get_many(10, timeout=1.0)
        assert_type(batch.sync, Batch)
        ids: List[int] = batch.ids
        values: List[Any] = batch.values
        assert len(ids) == len(values) == 2
        await batch.extend(10.0)
        await batch.nack([0])
        await batch.reject()
        last = await wq.get_many(10, timeout=1.0)
        await last.ack()
        assert_type(wq.qsize(), int)
        assert wq.qsize() == 0
        assert_type(wq.stats(), Dict[str, Any])
        wq.unlink()

    slog: Log[str] = Log(partitions=1)
    log = aq.Log.from_sync(slog)
    assert_type(log, aq.Log[str])
    with log:
        assert_type(log.sync, Log[str])
        log.append("a")
        assert_type(log.end_offset(0), int)
        consumer = aq.Consumer.from_sync(slog.consumer("g"))
        assert_type(consumer, aq.Consumer)
        with consumer:
            assert_type(consumer.sync, Consumer)
            got = await consumer.poll(timeout=1.0)
            assert [r.value for r in got] == ["a"]
            assert_type(consumer.assignment(), List[int])
            consumer.commit()
        log.unlink()


def use_connect() -> None:
    b = pyqueue.connect("shm://")
    assert b is pyqueue.connect("shm://")  # one backend object per URL and process
    q = b.Queue()
    q.put(b"x")
    assert isinstance(q, Queue)
    q.close()
    where: Tuple[str, str] = (b.url, b.name)
    assert where == ("shm://", "shm")
    assert (b.JoinableQueue, b.WorkQueue, b.Topic, b.Log) == (JoinableQueue, WorkQueue, Topic,
                                                               Log)
    try:
        pyqueue.connect("nosuch://x")
    except ValueError:
        pass
    else:
        raise AssertionError("an unknown scheme was taken")


if __name__ == "__main__":
    main()
