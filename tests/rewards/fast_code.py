"""The code reward with tight sandbox limits, for tests: a custom `module:function` reward."""

from rewards.code import code_reward
from rewards.sandbox import SandboxLimits

FAST = SandboxLimits(
    wall_s=3.0,
    cpu_s=2,
    memory_mb=256,
    file_size_mb=1,
    tmpfs_mb=4,
    processes=16,
    output_bytes=1 << 16,
)


def reward(completion: str, **row: object) -> float:
    return code_reward(completion, limits=FAST, **row)
