"""CPython's queue tests against pyqueue, start method "forkserver" (see __init__.py)."""
from tests.cpython_mp import _install

_install.install(globals(), "forkserver")
