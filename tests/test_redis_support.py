"""The Redis servers the tests start (tests/redis_support.py) never outlive
the process that started them, even when it is SIGKILLed."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import redis_support
from tests._support import proc_gone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(not redis_support.available(),
                                 reason="redis-server is not installed")]


_gone = proc_gone


def test_a_server_dies_with_the_process_that_started_it(tmp_path):
    script = ("import sys\n"
              "from tests.redis_support import RedisServer\n"
              "s = RedisServer(sys.argv[1])\n"
              "print(s.proc.pid, flush=True)\n"
              "sys.stdin.read()\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    starter = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    pid = None
    try:
        pid = int(starter.stdout.readline())
        assert not _gone(pid)                      # serving
        starter.kill()                             # no teardown, no atexit
        starter.wait(30)
        deadline = time.monotonic() + 30
        while not _gone(pid):
            assert time.monotonic() < deadline, f"redis-server {pid} outlived its starter"
            time.sleep(0.01)                       # polling a death, with a deadline
    finally:
        if pid is not None and not _gone(pid):
            os.kill(pid, signal.SIGKILL)           # this test failed: leave no server
        starter.kill()
        starter.wait(30)
        starter.stdin.close()
        starter.stdout.close()
