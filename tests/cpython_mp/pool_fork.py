"""CPython's pool tests against pyqueue.Pool, start method "fork" (see _install_pool.py)."""
from tests.cpython_mp import _install_pool

_install_pool.install(globals(), "fork")
