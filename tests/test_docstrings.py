"""Every public name of pyqueue is documented and annotated.

Walks pyqueue.__all__ (and the public classes of the public modules) and
each public method and property of those classes, inherited ones included
(Queue's put/get are the Cython base's): each has a docstring; methods
that can fail say how in a "Raises:" section (Google style, which the API
reference renders); methods written in Python annotate every parameter and
their return; no docstring points at a file that is not installed
(docs/..., csrc/...)."""
import inspect
import re

import pytest

import pyqueue
from pyqueue import asyncio as pq_asyncio
from pyqueue import consumer, errors, log, metrics, pool, queues, stream, topic, workqueue

PUBLIC_MODULES = (queues, topic, log, consumer, workqueue, stream, errors, metrics, pq_asyncio,
                  pool)

# Public classes beyond __all__: the two Log storage classes (what Log(...)
# makes) and the record a StreamProcessor's on_error gets.
EXTRA_CLASSES = (log.MemoryLog, log.DirectoryLog, stream.DeadRecord)

# Methods whose failure modes are none of their own (no "Raises:" needed):
# they return what they report, or do nothing.
# (Keyed by the class that defines the method.)
NO_RAISES = {
    "Queue.cancel_join_thread", "Queue.close", "JoinableQueue.join",
    "StreamProcessor.stop_nowait", "StreamProcessor.stop", "StreamProcessor.join",
    "StreamProcessor.worker_pids", "StreamProcessor.stats", "TopicCore.close",
    "MemoryLogCore.close", "DirectoryLog.close", "WorkQueueCore.close",
    "_Owner.close",  # pyqueue.asyncio: closing a handle
    "Pool.close", "Pool.terminate", "Executor.shutdown",
}
# Classes users get from a call, never construct (no "Args:" needed).
NOT_CONSTRUCTED = {"Delivery", "asyncio.Delivery", "asyncio.Batch", "asyncio.Subscription",
                   "asyncio.Consumer"}
# Builtin bases whose own members are not pyqueue's to document.
FOREIGN = (object, Exception, BaseException, tuple)


def public_classes():
    out = {}
    for name in pyqueue.__all__:
        obj = getattr(pyqueue, name)
        if inspect.isclass(obj) and obj.__module__.startswith("pyqueue"):
            out[name] = obj
    for cls in EXTRA_CLASSES:
        out[cls.__name__] = cls
    for name in pq_asyncio.__all__:  # pyqueue.asyncio's mirror classes
        out[f"asyncio.{name}"] = getattr(pq_asyncio, name)
    return out


def members(cls):
    """(name, raw attribute, defining class) of each public member of cls
    defined by pyqueue (in cls or a base of it in pyqueue)."""
    seen = set()
    for klass in cls.__mro__:
        if klass in FOREIGN or not klass.__module__.startswith("pyqueue"):
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            if cls.__mro__[0] is not klass and name in vars(cls):
                continue
            seen.add(name)
            yield name, attr, klass


def _is_method(attr):
    return (inspect.isfunction(attr) or inspect.ismethoddescriptor(attr)
            or isinstance(attr, (classmethod, staticmethod))
            or type(attr).__name__ == "cython_function_or_method")


def _func(attr):
    return attr.__func__ if isinstance(attr, (classmethod, staticmethod)) else attr


def test_every_public_name_has_a_docstring():
    missing = [n for n in pyqueue.__all__ if not (getattr(pyqueue, n).__doc__ or "").strip()]
    assert missing == []
    for mod in PUBLIC_MODULES:
        assert (mod.__doc__ or "").strip(), mod.__name__


@pytest.mark.parametrize("cls_name", sorted(public_classes()))
def test_every_public_method_and_property_has_a_docstring(cls_name):
    cls = public_classes()[cls_name]
    undocumented = []
    for name, attr, _ in members(cls):
        if isinstance(attr, property) or type(attr).__name__ == "getset_descriptor":
            doc = attr.__doc__
        elif _is_method(attr):
            doc = _func(attr).__doc__
        else:
            continue  # a class attribute (a constant), or a NamedTuple field
        # Cython's embedsignature puts the signature first: text must follow.
        text = re.sub(r"^\w+\.\w+\(.*?\)( -> .*)?\n", "", (doc or "").strip())
        if not text.strip():
            undocumented.append(name)
    assert undocumented == [], f"{cls_name}: no docstring for {undocumented}"


@pytest.mark.parametrize("cls_name", sorted(public_classes()))
def test_methods_that_can_fail_document_their_exceptions(cls_name):
    cls = public_classes()[cls_name]
    if issubclass(cls, Exception) or issubclass(cls, tuple):
        return
    missing = []
    for name, attr, klass in members(cls):
        if not _is_method(attr) or f"{klass.__name__}.{name}" in NO_RAISES:
            continue
        if "Raises:" not in (_func(attr).__doc__ or ""):
            missing.append(name)
    assert missing == [], f"{cls_name}: no 'Raises:' section in {missing}"
    if ("Args:" not in (cls.__doc__ or "") and "__init__" in vars(cls)
            and cls_name not in NOT_CONSTRUCTED):
        pytest.fail(f"{cls_name}: the class docstring has no 'Args:' for its constructor")


@pytest.mark.parametrize("cls_name", sorted(public_classes()))
def test_python_methods_are_fully_annotated(cls_name):
    """The Cython methods are annotated in their .pyi stubs (checked by
    stubtest and the type checkers in .ci/run); the Python ones here."""
    cls = public_classes()[cls_name]
    bare = []
    for name, attr, _ in list(members(cls)) + [("__init__", vars(cls).get("__init__"), cls)]:
        f = _func(attr) if attr is not None else None
        if not inspect.isfunction(f) or not f.__module__.startswith("pyqueue"):
            continue
        if cls.__module__ == "typing" or f.__qualname__.split(".")[0] not in (
                k.__name__ for k in cls.__mro__):
            continue
        sig = inspect.signature(f)
        params = list(sig.parameters.values())
        if params and params[0].name in ("self", "cls"):
            params = params[1:]
        for p in params:
            if p.annotation is inspect.Parameter.empty:
                bare.append(f"{name}({p.name})")
        if sig.return_annotation is inspect.Signature.empty:
            bare.append(f"{name} -> ?")
    assert bare == [], f"{cls_name}: not annotated: {bare}"


def _docstrings():
    for mod in PUBLIC_MODULES + (pyqueue,):
        yield mod.__name__, mod.__doc__
    for cls_name, cls in public_classes().items():
        yield cls_name, cls.__doc__
        for name, attr, _ in members(cls):
            doc = _func(attr).__doc__ if _is_method(attr) else getattr(attr, "__doc__", None)
            yield f"{cls_name}.{name}", doc


def test_no_docstring_points_at_files_that_are_not_installed():
    bad = [where for where, doc in _docstrings()
           if doc and re.search(r"\b(docs|csrc)/|\.md\b|\.pyx\b|\.pxi\b", doc)]
    assert bad == []


def test_stub_docstrings_are_the_extensions():
    """Tools that read the stubs (mkdocstrings, IDEs) show the same text as
    help(): tests/typing/stub_docstrings.py rewrites them when this fails."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "typing", "stub_docstrings.py")
    spec = importlib.util.spec_from_file_location("stub_docstrings", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    members = [m for name in mod.MODULES for m in mod.stub_members(name)]
    assert len(members) > 40  # the walk found the stubs' members
    assert mod.mismatches() == [], "run: python tests/typing/stub_docstrings.py"
