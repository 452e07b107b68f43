"""The program that runs inside the sandbox: model-written code, then its tests.

r1kit never imports this module to use it: `rewards.sandbox` hands its source to the sandbox's
interpreter (`python -I -c SOURCE FD`) and the job as JSON on file descriptor FD, which this
program reads and closes before any model code runs. Keep it to the standard library and to
Python 3.8 syntax: it runs under the system interpreter, not r1kit's.

Two modes:

- "stdio": run the program as `__main__`; the caller feeds stdin and compares stdout.
- "assert": run the code in a namespace, then each test in a copy of it (with the builtins as
  they were before the code ran, so that patching `builtins` does not reach the tests); a test
  passes if it runs without an exception and, given an entry point, its `check(candidate)`
  returns. Then one line goes to stdout: the job's random token and one bit per test.

The token proves that the tests ran to completion. A program that exits early (`sys.exit(0)`,
`os._exit(0)`, `raise SystemExit`), or whose exception escapes the tests, never gets the line
printed, and it cannot print the line itself: the token lives only in an audit hook's closure
(`_seal`), which Python code cannot reach once the hook is installed:

- the hook prints the token only for an `r1kit.finish` event raised from this harness's own
  `main` frame, in this process (not a fork's), and then exits at once;
- the hook ends the process (exit code `EXIT_BLOCKED`) on the events that could reach its frame
  or its memory: tracing and profiling, new audit hooks, the garbage collector's object lists,
  another thread's frames, ctypes, the signal module (handlers receive the current frame), and
  starting other programs. It never raises (a traceback would hold its frame) and does not
  allocate on its usual path (a garbage collection could run a finalizer inside it);
- `main` keeps in local variables everything it uses after the model code has run.

What this does not stop: code that reads the tests from its caller's frame, returns objects
whose `==` is always true, or patches a standard-library module that a test imports. The
reward is for code that passes the tests; such code is visible in the completions.
"""

import builtins
import json
import os
import sys

EXIT_BLOCKED = 90
"""The program did something the harness does not allow (see the module docstring)."""
EXIT_FORGED = 91
"""Something other than the harness's own `main` asked for the token."""
BLOCKED_EVENTS = frozenset(
    {
        "sys.settrace",
        "sys.setprofile",
        "sys._settraceallthreads",
        "sys._setprofileallthreads",
        "sys.monitoring.register_callback",
        "sys.addaudithook",
        "sys._current_frames",
        "sys._current_exceptions",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.system",
        "os.forkpty",
        "subprocess.Popen",
    }
)
BLOCKED_MODULES = frozenset(
    {"ctypes", "_ctypes", "signal", "_signal", "_posixsubprocess", "_testcapi", "_testinternalcapi"}
)


def _seal(token):
    """Install the audit hook that holds `token` and prints it for `main` alone."""
    import gc

    main_frame = sys._getframe(1)
    harness_pid = os.getpid()
    write, exit_, getframe, getpid, gc_disable = (
        os.write,
        os._exit,
        sys._getframe,
        os.getpid,
        gc.disable,
    )
    blocked_events, blocked_modules, startswith = BLOCKED_EVENTS, BLOCKED_MODULES, str.startswith
    str_, type_, base_exception = str, type, BaseException

    def hook(event, args):
        try:
            if event == "r1kit.finish":
                gc_disable()
                if getframe(1) is not main_frame or getpid() != harness_pid:
                    exit_(EXIT_FORGED)
                write(1, b"\n" + token + b" " + args[0].encode("ascii") + b"\n")
                exit_(0)
            if (
                event in blocked_events
                or startswith(event, "ctypes.")
                or (
                    event == "import" and (type_(args[0]) is not str_ or args[0] in blocked_modules)
                )
            ):
                write(2, b"\nr1kit sandbox: blocked " + event.encode() + b"\n")
                exit_(EXIT_BLOCKED)
        except base_exception:
            exit_(EXIT_BLOCKED)

    sys.addaudithook(hook)


def _read_job(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return json.loads(b"".join(chunks))


def run_stdio(code):
    """Run `code` as the main program; its exit status is the process's."""
    sys.argv = ["solution.py"]
    exec(compile(code, "<solution>", "exec"), {"__name__": "__main__", "__builtins__": builtins})


def main():
    job = _read_job(int(sys.argv[1]))
    if job["mode"] == "stdio":
        run_stdio(job["code"])
        return
    sys.argv = ["solution.py"]
    code, tests, entry_point = job["code"], job["tests"], job.get("entry_point")
    pristine = dict(vars(builtins))
    # Everything used after the model code runs is bound here: it cannot patch these names.
    exec_, compile_, dict_, audit, exception = exec, compile, dict, sys.audit, Exception
    for name in BLOCKED_MODULES:
        sys.modules.pop(name, None)
    _seal(job.pop("token").encode("ascii"))
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec_(compile_(code, "<solution>", "exec", 0, True, 0), namespace)
        loaded = True
    except exception:
        loaded = False
    bits = ""
    for test in tests:
        passed = False
        if loaded:
            scope = dict_(namespace)
            scope["__builtins__"] = dict_(pristine)
            try:
                exec_(compile_(test, "<test>", "exec", 0, True, 0), scope)
                if entry_point is not None:
                    scope["check"](namespace[entry_point])
                passed = True
            except exception:
                pass
        bits = bits + ("1" if passed else "0")
    audit("r1kit.finish", bits)
    os._exit(EXIT_FORGED)  # not reached: the hook exits


if __name__ == "__main__":
    main()
