"""Misbehaving reward functions, imported by the pool's worker processes in tests.

Each one misbehaves only when the completion contains its trigger word, and otherwise scores
0.0, so that one pool can carry all of them next to a real reward.
"""

from __future__ import annotations

import os
import subprocess
import time

from math_verify.errors import TimeoutException

from rewards import RewardSetupError


def sleep_forever(completion: str, **_: object) -> float:
    """Never returns on "HANG"."""
    while "HANG" in completion:
        time.sleep(3600)
    return 0.0


def sleep_briefly(completion: str, **_: object) -> float:
    """Sleeps 0.5 s on "SLOW", so that this sample finishes after later ones."""
    if "SLOW" in completion:
        time.sleep(0.5)
    return 0.0


def raise_error(completion: str, **_: object) -> float:
    """Raises ZeroDivisionError on "RAISE"."""
    if "RAISE" in completion:
        return 1 / 0
    return 0.0


def raise_timeout(completion: str, **_: object) -> float:
    """Raises math-verify's TimeoutException (a BaseException) on "ALARM"."""
    if "ALARM" in completion:
        raise TimeoutException("Operation timed out!")
    return 0.0


def exit_process(completion: str, **_: object) -> float:
    """Kills its own process on "EXIT", as a segfault would."""
    if "EXIT" in completion:
        os._exit(3)
    return 0.0


def spawn_and_hang(completion: str, pid_file: str = "", **_: object) -> float:
    """On "ORPHAN", starts a `sleep` child, writes its pid to `pid_file`, and hangs."""
    if "ORPHAN" in completion:
        child = subprocess.Popen(["sleep", "60"])
        with open(pid_file, "w") as f:
            f.write(str(child.pid))
        while True:
            time.sleep(3600)
    return 0.0


def refuse_setup(completion: str, **_: object) -> float:
    """Raises RewardSetupError (as the code reward does without a sandbox) on "NOSANDBOX"."""
    if "NOSANDBOX" in completion:
        raise RewardSetupError("no sandbox here")
    return 0.0
