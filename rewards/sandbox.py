"""Run model-written Python in a bubblewrap sandbox, with limits on everything it can spend.

One run is one process tree:

    bwrap (new network, pid, ipc, uts and cgroup namespaces; minimal read-only root)
      setpriv (an unprivileged uid and gid, no groups, no capabilities, no_new_privs)
        prlimit (CPU seconds, address space, file size, processes, no core files)
          python -I -B -c <rewards/harness.py> FD   (the job arrives as JSON on FD)

The root holds /usr read-only (with the /bin, /lib... links of a merged-/usr system), a private
/dev, and a private, size-capped, world-writable tmpfs at /tmp, which is also the working
directory; there is no /proc, no /etc, no home directory, no network but a private loopback,
and the environment is cleared. Each run gets a random uid in `UID_RANGE`, so that the process
limit of one run is not shared with another. The caller kills the tree after `wall_s` seconds
(bubblewrap's --die-with-parent and the pid namespace take every process with it) or as soon
as stdout passes `output_bytes`.

The caller must be root (to start bubblewrap without a user namespace and switch to the run's
uid; RLIMIT_NPROC does not bind root). Where that or bubblewrap is missing, or a test run in
the sandbox fails, `check_sandbox` refuses to run anything (`SandboxUnavailable`),
unless the environment variable `R1KIT_UNSAFE_NO_SANDBOX=1` says to run the harness without
isolation (only the rlimits and the timeout apply; model code can then read and write
everything the calling user can).

The interpreter inside the sandbox is the system's `/usr/bin/python3` (it must be readable by
an unprivileged uid; a pyenv or venv interpreter under /root is not), or the one that
`R1KIT_SANDBOX_PYTHON` names; one outside /usr is bound read-only with its installation prefix.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .registry import RewardSetupError

UNSAFE_ENV = "R1KIT_UNSAFE_NO_SANDBOX"
"""Set to 1 to run model code without isolation where bubblewrap cannot run."""
PYTHON_ENV = "R1KIT_SANDBOX_PYTHON"
"""The interpreter to run inside the sandbox (default: /usr/bin/python3)."""
UID_RANGE = (61000, 65000)
"""Unprivileged uids (and gids) for sandboxed runs, one drawn at random per run."""
HARNESS = Path(__file__).with_name("harness.py")


class SandboxUnavailable(RewardSetupError):
    """bubblewrap cannot run here and running code without it was not allowed."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one sandboxed run may spend."""

    wall_s: float = 10.0
    """Wall-clock seconds before the whole process tree is killed."""
    cpu_s: int = 5
    """CPU seconds per process (RLIMIT_CPU; SIGXCPU, then SIGKILL a second later)."""
    memory_mb: int = 1024
    """Address space per process (RLIMIT_AS), MiB."""
    file_size_mb: int = 16
    """Largest file a process may write (RLIMIT_FSIZE), MiB."""
    tmpfs_mb: int = 64
    """Size of the private /tmp, MiB."""
    processes: int = 32
    """Processes and threads of the run's uid (RLIMIT_NPROC)."""
    output_bytes: int = 1 << 20
    """stdout beyond this kills the run; stderr beyond it is dropped."""


@dataclass(frozen=True)
class RunResult:
    """How one sandboxed run ended."""

    returncode: int | None
    """Exit status (negative: killed by that signal); None if it was killed by the caller."""
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    """It ran past `wall_s`."""
    output_overflow: bool = False
    """It wrote more than `output_bytes` to stdout."""


def run_python(job: dict, limits: SandboxLimits, stdin: bytes = b"") -> RunResult:
    """Run `rewards/harness.py` on `job` (a JSON-able dict) in the sandbox; see the harness.

    Raises `SandboxUnavailable` where bubblewrap cannot run (see the module docstring).
    """
    mode = check_sandbox()
    with tempfile.TemporaryFile() as job_file, tempfile.TemporaryFile() as stdin_file:
        job_file.write(json.dumps(job).encode())
        job_file.seek(0)
        stdin_file.write(stdin)
        stdin_file.seek(0)
        uid = secrets.randbelow(UID_RANGE[1] - UID_RANGE[0]) + UID_RANGE[0]
        argv = _argv(mode, limits, job_file.fileno(), uid)
        process = subprocess.Popen(
            argv,
            stdin=stdin_file,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(job_file.fileno(),),
            env=_environment(mode),
            # Without bubblewrap's pid namespace, the process group is what `_kill` can reach.
            start_new_session=mode == "unsafe",
        )
        result = _collect(process, limits, kill_group=mode == "unsafe")
    if mode == "bubblewrap":
        _kill_leftovers(uid)
    return result


def check_sandbox() -> str:
    """ "bubblewrap" if sandboxed runs work here, "unsafe" if the user allowed runs without it.

    Raises `SandboxUnavailable` with the reason otherwise. The probe runs once per process.
    """
    works, reason = _probe()
    if works:
        return "bubblewrap"
    if os.environ.get(UNSAFE_ENV) == "1":
        _warn_unsafe(reason)
        return "unsafe"
    raise SandboxUnavailable(
        f"refusing to run model-written code: the bubblewrap sandbox does not work here "
        f"({reason}). Install it (`make system-deps`, or `apt-get install bubblewrap`), or set "
        f"{UNSAFE_ENV}=1 to run code WITHOUT isolation (only rlimits and timeouts apply)"
    )


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[bool, str]:
    """Run a one-line program in the full sandbox: (works, why not)."""
    for tool in ("bwrap", "setpriv", "prlimit"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` not found"
    if os.geteuid() != 0:
        return False, "it needs root to switch to an unprivileged uid (setpriv)"
    python = _sandbox_python()
    if not os.access(python, os.X_OK):
        return False, f"no interpreter at {python} (set {PYTHON_ENV})"
    job = {"mode": "stdio", "code": "print('ok')"}
    with tempfile.TemporaryFile() as job_file:
        job_file.write(json.dumps(job).encode())
        job_file.seek(0)
        argv = _argv("bubblewrap", SandboxLimits(), job_file.fileno(), UID_RANGE[0])
        try:
            done = subprocess.run(
                argv, capture_output=True, pass_fds=(job_file.fileno(),), timeout=60, env={}
            )
        except subprocess.TimeoutExpired:
            return False, "a test run did not finish in 60 s"
    if done.returncode != 0 or done.stdout != b"ok\n":
        message = done.stderr.decode(errors="replace").strip().splitlines()
        return False, f"a test run failed: {message[-1] if message else done.returncode}"
    return True, ""


@functools.lru_cache(maxsize=1)
def _warn_unsafe(reason: str) -> None:
    print(
        f"r1kit: WARNING: {UNSAFE_ENV}=1: running model-written code WITHOUT a sandbox "
        f"({reason}); it can read and write what this user can",
        file=sys.stderr,
    )


def _sandbox_python() -> str:
    return os.environ.get(PYTHON_ENV) or "/usr/bin/python3"


@functools.lru_cache(maxsize=4)
def _harness_source() -> str:
    return HARNESS.read_text()


def _argv(mode: str, limits: SandboxLimits, job_fd: int, uid: int) -> list[str]:
    python = _sandbox_python()
    command = [
        "prlimit",
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
        f"--as={limits.memory_mb << 20}",
        f"--fsize={limits.file_size_mb << 20}",
        f"--nproc={limits.processes}",
        "--core=0",
        "--",
        python,
        "-I",  # isolated: no environment variables, no user site, no script dir on sys.path
        "-B",
        "-c",
        _harness_source(),
        str(job_fd),
    ]
    if mode == "unsafe":
        return command
    drop = ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups"]
    drop += ["--no-new-privs"]
    drop += ["--bounding-set", "-all", "--inh-caps", "-all", "--"]
    return _bwrap_argv(python, limits) + drop + command


def _bwrap_argv(python: str, limits: SandboxLimits) -> list[str]:
    argv = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    argv += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    prefix = Path(python).resolve().parent.parent
    if not prefix.is_relative_to("/usr"):
        argv += ["--ro-bind", str(prefix), str(prefix)]
    argv += ["--dev", "/dev", "--perms", "1777", "--size", str(limits.tmpfs_mb << 20)]
    argv += ["--tmpfs", "/tmp", "--chdir", "/tmp", "--clearenv"]
    for key, value in _environment("bubblewrap").items():
        argv += ["--setenv", key, value]
    return argv


def _environment(mode: str) -> dict[str, str]:
    """The whole environment of a run (the caller's is never passed on)."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if mode == "bubblewrap":
        env |= {"HOME": "/tmp", "TMPDIR": "/tmp"}
    return env


def _collect(process: subprocess.Popen, limits: SandboxLimits, *, kill_group: bool) -> RunResult:
    """Read stdout and stderr up to the cap until the process exits or its time is up."""
    deadline = time.monotonic() + limits.wall_s
    output = {process.stdout: bytearray(), process.stderr: bytearray()}
    timed_out = overflow = False
    with selectors.DefaultSelector() as selector:
        for stream in output:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = output[key.fileobj]
                buffer += chunk[: max(0, limits.output_bytes + 1 - len(buffer))]
            if len(output[process.stdout]) > limits.output_bytes:
                overflow = True
                break
    try:
        returncode = None if (timed_out or overflow) else process.wait(deadline - time.monotonic())
    except subprocess.TimeoutExpired:
        timed_out, returncode = True, None
    _kill(process, kill_group)
    return RunResult(
        returncode,
        bytes(output[process.stdout][: limits.output_bytes]),
        bytes(output[process.stderr][: limits.output_bytes]),
        timed_out,
        overflow,
    )


def _kill(process: subprocess.Popen, group: bool) -> None:
    """SIGKILL bubblewrap (the sandbox dies with it), or the process group; reap; close pipes."""
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    process.wait()
    process.stdout.close()
    process.stderr.close()


def _kill_leftovers(uid: int, timeout_s: float = 2.0) -> None:
    """SIGKILL every live process of a run (its uid is its own) until none is left.

    bubblewrap's outer process exits when the program does (or when it is killed), while the
    kernel tears down the pid namespace behind it; this waits for that, so that no process of
    a run is alive when it returns. Zombies are dead already: the teardown reaps them.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        live = [pid for pid, zombie in _processes_of(uid) if not zombie]
        if not live:
            return
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def _processes_of(uid: int) -> list[tuple[int, bool]]:
    """(pid, is a zombie) of every process whose real uid is `uid`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                status = f.read()
        except OSError:  # it exited meanwhile
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            found.append((int(entry.name), fields.get("State", "").strip().startswith("Z")))
    return found
