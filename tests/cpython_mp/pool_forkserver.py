"""CPython's pool tests against pyqueue.Pool, start method "forkserver" (see _install_pool.py)."""
from tests.cpython_mp import _install_pool

_install_pool.install(globals(), "forkserver")
