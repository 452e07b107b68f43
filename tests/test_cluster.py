"""A real two-node Ray cluster on this machine, started with ``ray start``, that ``r1kit train``
joins with ``ray.address`` (as on a cluster r1kit did not start).

The head node offers one ``r1kit_learner`` slot; the second node one ``r1kit_learner`` and one
``r1kit_rollout``: the recipe's ``learner.resources`` and ``rollout.resources`` put rank 0 and
rank 1 on different nodes (FSDP2's gloo group crosses them) and the engine on the second
node, and the collective weight sync goes across nodes too. Each node has its own session
folder, and the fixture ends its own processes: ``ray stop`` would end every Ray cluster on
the machine, the test session's included. ``ray start --head`` turns Ray's token
authentication on (Ray 2.60): the second node and the driver join with ``RAY_AUTH_MODE=token``
and the token ``ray start`` left in ~/.ray/auth_token, as on a real cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

RAY = str(Path(sys.executable).with_name("ray"))
TIMEOUT_S = 600
JOIN_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}  # what joins a token-authenticated cluster


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_nodes(address: str) -> int:
    """Alive nodes of the cluster at ``address``, asked from a fresh process (this one is
    connected to the test session's cluster)."""
    probe = "import ray; ray.init(address=%r); print(sum(n['Alive'] for n in ray.nodes()))"
    out = subprocess.run(
        [sys.executable, "-c", probe % address],
        capture_output=True,
        text=True,
        timeout=120,
        env=JOIN_ENV,
    )
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: ended as one below
            env=JOIN_ENV,
        )


@pytest.fixture
def two_nodes(ray_cluster):
    import ray

    port = _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"  # where ray start binds the head
    temp = tempfile.mkdtemp(prefix="r1kit-ray-", dir="/tmp")  # short: socket paths
    procs = [
        _start(
            [
                "--head",
                f"--port={port}",
                "--num-cpus=2",
                '--resources={"r1kit_learner": 1}',
                "--include-dashboard=false",
                f"--temp-dir={temp}",
            ],
            Path(temp) / "head.log",
        )
    ]
    try:
        deadline = time.time() + 120
        while _alive_nodes(address) < 1:
            assert time.time() < deadline, (Path(temp) / "head.log").read_text()[-2000:]
            time.sleep(1)
        procs.append(
            _start(
                [
                    f"--address={address}",
                    "--num-cpus=2",
                    '--resources={"r1kit_learner": 1, "r1kit_rollout": 1}',
                ],
                Path(temp) / "node.log",
            )
        )
        while _alive_nodes(address) < 2:
            assert time.time() < deadline, (Path(temp) / "node.log").read_text()[-2000:]
            time.sleep(1)
        yield address
    finally:
        for proc in reversed(procs):  # each node's processes are one process group
            os.killpg(proc.pid, signal.SIGKILL)  # (SIGTERM left its GCS running here)
            proc.wait(timeout=60)


def test_train_joins_a_two_node_cluster_with_ranks_and_engines_on_different_nodes(
    two_nodes, tiny_policy_dir, tmp_path
):
    out = tmp_path / "run"
    overrides = [
        f"model.path={tiny_policy_dir}",
        f"ray.address={two_nodes}",
        "data.generator_args={n_sft: 128, n_rl: 64, n_eval: 8, seed: 3, max_terms: 2, max_digits: 1}",
        "sft.steps=4",
        "sft.batch_size=16",
        "grpo.steps=2",
        "grpo.prompts_per_step=4",
        "grpo.group_size=4",
        "grpo.max_new_tokens=16",
        "grpo.kl_coef=0.05",  # every row trained on: logprob_diff covers every sample
        "eval.max_new_tokens=16",
        "learner.world_size=2",
        "learner.resources={r1kit_learner: 1}",
        "rollout.resources={r1kit_rollout: 1}",
        "rollout.sync_transport=collective",
    ]
    cmd = [sys.executable, "-m", "rl.cli", "train", "recipes/demo.yaml", "--out", str(out)]
    done = subprocess.run(
        [*cmd, *overrides], capture_output=True, text=True, timeout=TIMEOUT_S, env=JOIN_ENV
    )
    assert done.returncode == 0, done.stderr[-3000:]
    placement = json.loads((out / "summary.json").read_text())["placement"]
    learner, rollout = placement["learner"], placement["rollout"]
    assert len(set(learner)) == 2  # rank 0 and rank 1 on different nodes
    assert len(rollout) == 1 and set(rollout) < set(learner)  # the engine on one of them only
    assert "learner ranks on node" in done.stdout + done.stderr  # the plan shows it
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    assert [r["step"] for r in grpo] == [1, 2]
    for r in grpo:  # the weights crossed nodes intact: engine and learner agree
        assert r["sync_fallbacks"] == 0 and r["sync_bytes"] > 0
        assert r["logprob_diff_max"] < 1e-3, r
