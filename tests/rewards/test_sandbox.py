"""What a program sees and may spend inside the sandbox; one property per test.

Each test runs a small stdin/stdout program (no harness checks in the way) that reports what it
observed, so the limits themselves are what is tested.
"""

import os

from rewards.sandbox import UID_RANGE, SandboxLimits, run_python

LIMITS = SandboxLimits(wall_s=5.0, cpu_s=2, memory_mb=256, file_size_mb=1, tmpfs_mb=2, processes=8)


def run(code: str, limits: SandboxLimits = LIMITS, stdin: bytes = b"") -> str:
    result = run_python({"mode": "stdio", "code": code}, limits, stdin)
    assert result.returncode == 0 and not result.timed_out, result
    return result.stdout.decode()


def test_runs_as_an_unprivileged_uid_without_capabilities():
    uid, caps = run("import os\nprint(os.getuid())\nprint(os.getgroups())\n").split("\n")[:2]
    assert UID_RANGE[0] <= int(uid) < UID_RANGE[1]
    assert caps == "[]"


def test_sees_only_a_minimal_root():
    listing = set(run("import os\nprint(*os.listdir('/'))\n").split())
    assert {"usr", "dev", "tmp", "bin", "lib"} <= listing
    # /usr and the merged-/usr links only: no /proc, /etc, /root, /home, no project files.
    assert listing <= {"usr", "dev", "tmp", "bin", "sbin", "lib", "lib32", "lib64", "libx32"}


def test_root_is_read_only_and_tmp_is_private():
    code = """
import os
for path in ["/usr/x", "/x", "/dev/x", "/tmp/x"]:
    try:
        open(path, "w").write("x")
        print(path, "ok")
    except OSError as e:
        print(path, type(e).__name__)
print(os.listdir("/tmp"))
"""
    lines = run(code).splitlines()
    assert lines[:3] == ["/usr/x OSError", "/x PermissionError", "/dev/x PermissionError"]
    assert lines[3:] == ["/tmp/x ok", "['x']"]  # a fresh tmpfs: nothing of the host's /tmp


def test_environment_is_cleared(monkeypatch):
    monkeypatch.setenv("R1KIT_TEST_SECRET", "hunter2")
    env = run("import os\nprint(sorted(os.environ))\n").strip()
    assert env == "['HOME', 'LANG', 'LC_ALL', 'PATH', 'PWD', 'TMPDIR']"


def test_no_network_but_a_private_loopback():
    code = "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))\n"
    assert run(code).strip() == "['lo']"


def test_process_limit():
    # Forks until fork fails; every child sleeps. The uid may have `processes` (8) at once.
    code = """
import os, time
children = 0
try:
    while children < 100:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
except OSError:
    pass
print(children, flush=True)
os._exit(0)
"""
    assert 0 < int(run(code)) < LIMITS.processes


def test_memory_limit():
    code = "try:\n    x = bytearray(300 << 20)\n    print('allocated')\nexcept MemoryError:\n    print('MemoryError')\n"
    assert run(code).strip() == "MemoryError"


def test_file_size_limit():
    code = """
import signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
try:
    open("/tmp/big", "wb").write(b"x" * (2 << 20))
except OSError as e:
    print(e.errno)
"""
    assert run(code).strip() == "27"  # EFBIG at 1 MiB


def test_tmpfs_size_limit():
    code = """
written = 0
try:
    for i in range(10):
        with open(f"/tmp/f{i}", "wb") as f:
            f.write(b"x" * (512 << 10))
        written += 1
except OSError as e:
    print(written, e.errno)
"""
    assert run(code).strip() == "4 28"  # ENOSPC after 4 x 512 KiB = the 2 MiB tmpfs


def test_cpu_limit():
    # A wall-clock limit far away: the CPU limit (2 s) is what ends the loop.
    limits = SandboxLimits(wall_s=60.0, cpu_s=2)
    result = run_python({"mode": "stdio", "code": "while True:\n    pass\n"}, limits)
    assert not result.timed_out
    assert result.returncode == 128 + 24  # bubblewrap reports the signal: SIGXCPU (24)


def test_wall_clock_limit():
    limits = SandboxLimits(wall_s=1.0)
    result = run_python({"mode": "stdio", "code": "import time\ntime.sleep(60)\n"}, limits)
    assert result.timed_out and result.returncode is None


def test_output_cap():
    limits = SandboxLimits(output_bytes=1000)
    result = run_python({"mode": "stdio", "code": "print('x' * 5000)\n"}, limits)
    assert result.output_overflow and len(result.stdout) == 1000


def test_stdin_is_the_case_input():
    assert run("print(input()[::-1])\n", stdin=b"abc\n").strip() == "cba"


def test_no_process_outlives_its_run():
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint(os.getuid())\n"
    uid = int(run(code).split()[0])
    assert not uid_processes(uid)


def uid_processes(uid: int) -> list[int]:
    """Live processes (zombies are dead already) of `uid`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(x.split(":", 1) for x in f)
        except (OSError, ValueError):
            continue
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found
