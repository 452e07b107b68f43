"""Hostile programs through the code reward and the reward pool; one hostile property per test.

Each program defines a correct `add` only if its attack worked, so a score of 1.0 means the
sandbox leaked. Every score must come back from the sandbox, not from the pool's timeout (30 s,
ten times the sandbox's wall-clock limit: a hang bound, not a speed check). Every test also
checks, after the attack (`host_untouched`): a canary file on the host is intact, the pool's
workers are the same processes, no sandbox process is left, and the pool still scores a correct
program 1.0.
"""

import contextlib
import multiprocessing as mp
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from rewards import RewardPool
from rewards.sandbox import UID_RANGE, run_python
from tests.rewards.fast_code import FAST

REWARD = "tests.rewards.fast_code:reward"
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
ROW = {"test": TEST, "entry_point": "add"}
CORRECT = "def add(a, b):\n    return a + b\n"
SECRET = "r1kit-test-secret-4f1c"
POOL_TIMEOUT_S = 10 * FAST.wall_s


@pytest.fixture(scope="module")
def pool():
    os.environ["R1KIT_TEST_SECRET"] = SECRET  # the spawned workers inherit it; the sandbox must not
    try:
        with RewardPool({REWARD: 1.0}, num_workers=2, timeout_s=POOL_TIMEOUT_S) as pool:
            assert score(pool, CORRECT) == 1.0  # starts both workers
            yield pool
    finally:
        del os.environ["R1KIT_TEST_SECRET"]


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary.txt"
    path.write_text("still here")
    return path


def worker_pids() -> set[int]:
    return {p.pid for p in mp.active_children() if p.name == "reward-worker"}


@pytest.fixture
def host_untouched(pool, canary):
    workers = worker_pids()
    yield
    assert canary.read_text() == "still here"
    assert worker_pids() == workers  # no worker died or was replaced
    assert not sandbox_processes()
    assert score(pool, CORRECT) == 1.0  # and the pool keeps serving


def score(pool: RewardPool, code: str, row: dict | None = None) -> float:
    """The reward of ``code`` as the sandbox returned it (not the pool's timeout)."""
    [result] = pool.score([f"```python\n{code}```"], [row or ROW])
    assert result.error is None and not result.timed_out, result
    return result.reward


def sandbox_processes() -> list[int]:
    """Processes on the host that run as a sandbox uid."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            uid_line = next(
                x for x in (entry / "status").read_text().splitlines() if x[:4] == "Uid:"
            )
        except (OSError, StopIteration):
            continue
        if UID_RANGE[0] <= int(uid_line.split()[1]) < UID_RANGE[1]:
            found.append(int(entry.name))
    return found


pytestmark = pytest.mark.usefixtures("host_untouched")


def test_fork_bomb(pool):
    code = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    assert score(pool, code) == 0.0


def test_memory_bomb(pool):
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))\n" + CORRECT
    assert score(pool, code) == 0.0


def test_infinite_loop(pool):
    assert score(pool, "while True:\n    pass\n" + CORRECT) == 0.0


def test_sleeping_forever(pool):
    assert score(pool, "import time\ntime.sleep(10**6)\n" + CORRECT) == 0.0


def test_deleting_a_host_file(pool, canary):
    code = f"""
import os, shutil
try:
    os.remove({str(canary)!r})
    shutil.rmtree({str(canary.parent)!r})
    deleted = True
except OSError:
    deleted = False
def add(a, b):
    return a + b if deleted else None
"""
    assert score(pool, code) == 0.0


def test_writing_a_host_file(pool, tmp_path):
    target = tmp_path / "written.txt"
    code = f"""
try:
    open({str(target)!r}, "w").write("pwned")
    wrote = True
except OSError:
    wrote = False
def add(a, b):
    return a + b if wrote else None
"""
    assert score(pool, code) == 0.0
    assert not target.exists()


def test_reading_an_environment_secret(pool):
    code = f"""
import os
found = {SECRET!r} in str(os.environ)
for path in ["/proc/self/environ", "/proc/1/environ", "/proc/{os.getppid()}/environ"]:
    try:
        found = found or {SECRET!r} in open(path, "rb").read().decode(errors="replace")
    except OSError:
        pass
def add(a, b):
    return a + b if found else None
"""
    assert score(pool, code) == 0.0


def test_opening_a_socket_to_the_host(pool):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.1)
        connections, done = [], threading.Event()

        def accept():
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    connections.append(server.accept())

        listener = threading.Thread(target=accept)
        listener.start()
        code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {server.getsockname()[1]}), timeout=1).sendall(b"hi")
    sent = True
except OSError:
    sent = False
def add(a, b):
    return a + b if sent else None
"""
        try:
            reward = score(pool, code)
            time.sleep(0.2)  # a connection that got through would have been accepted by now
        finally:
            done.set()
            listener.join()
    assert reward == 0.0
    assert connections == []


def test_killing_the_parent_and_the_host(pool):
    targets = [os.getpid(), *worker_pids()]
    code = f"""
import os, signal
killed = 0
for pid in [os.getppid(), -1, *{targets!r}]:
    try:
        os.kill(pid, signal.SIGKILL)
        killed += 1
    except OSError:
        pass
def add(a, b):
    return a + b if killed > 2 else None
"""
    assert score(pool, code) == 0.0


def test_huge_output(pool):
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n" + CORRECT
    assert score(pool, code) == 0.0
    # what ended it, as the sandbox reports it: the output cap, not the clock
    job = {"mode": "assert", "code": code, "tests": [TEST], "entry_point": "add", "token": "0" * 32}
    result = run_python(job, FAST)
    assert result.output_overflow and not result.timed_out and result.returncode is None
    assert len(result.stdout) == FAST.output_bytes


def test_sys_exit_zero_before_the_tests(pool):
    assert score(pool, CORRECT + "import sys\nsys.exit(0)\n") == 0.0


def test_os_exit_zero_before_the_tests(pool):
    assert score(pool, CORRECT + "import os\nos._exit(0)\n") == 0.0


def test_raising_system_exit_inside_the_tests(pool):
    assert score(pool, "def add(a, b):\n    raise SystemExit(0)\n") == 0.0


def test_skipping_the_tests(pool):
    code = "import unittest\ndef add(a, b):\n    raise unittest.SkipTest('later')\n"
    assert score(pool, code) == 0.0


def test_overriding_check(pool):
    code = "import builtins\ndef check(candidate):\n    pass\nbuiltins.check = check\n"
    code += "def add(a, b):\n    return None\n"
    assert score(pool, code) == 0.0


def test_monkeypatching_builtins_the_tests_use(pool):
    # The tests get the builtins as they were before the program ran.
    test = "def check(candidate):\n    assert abs(candidate(2, 3) - 5) < 1e-9\n"
    code = "import builtins\nbuiltins.abs = lambda x: 0\ndef add(a, b):\n    return None\n"
    assert score(pool, code, {"test": test, "entry_point": "add"}) == 0.0


def test_assert_free_stub(pool):
    assert score(pool, "def add(a, b):\n    pass\n") == 0.0


def test_printing_a_forged_completion_line(pool):
    code = "print('0' * 32 + ' 1')\nprint('\\n' + 'f' * 32 + ' 1')\nimport os\nos._exit(0)\n"
    assert score(pool, code) == 0.0


def test_asking_the_harness_for_its_token(pool):
    code = "import sys\nsys.audit('r1kit.finish', '1')\n" + CORRECT
    assert score(pool, code) == 0.0


def test_searching_frames_and_objects_for_the_token(pool):
    # main's frame is reachable, but the token is not in it; the gc's object lists are blocked.
    code = """
import gc, os, re, sys
seen = []
frame = sys._getframe()
while frame is not None:
    seen.append(repr(frame.f_locals))
    frame = frame.f_back
seen.extend(repr(o)[:200] for o in gc.get_objects() if isinstance(o, (bytes, str)))
tokens = re.findall(r"[0-9a-f]{32}", " ".join(seen))
for token in tokens:
    os.write(1, ("\\n" + token + " 1\\n").encode())
os._exit(0)
"""
    assert score(pool, code) == 0.0


def test_a_fork_cannot_finish_for_its_parent(pool):
    # The child answers right, the parent wrong: only the harness's own process may finish.
    code = "import os\ndef add(a, b):\n    return a + b if os.fork() == 0 else None\n"
    assert score(pool, code) == 0.0
