"""A real Ray cluster of several nodes on this machine, started with ``ray start``, that
``r1kit train`` joins with ``ray.address`` (as on a cluster r1kit did not start).

Two nodes offer one ``r1kit_learner`` slot each and a third one ``r1kit_rollout``: the
recipe's ``learner.resources`` and ``rollout.resources`` put rank 0 and rank 1 on different
nodes (FSDP2's gloo group crosses them) and the engine on the third, and the collective
weight sync goes across nodes too. One run covers joining and losing a node (each run costs
the driver's, the ranks' and the engine's start-up). Each node has its own session
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


class Cluster:
    """Ray nodes started by ``ray start`` on this machine, each its own process group."""

    def __init__(self) -> None:
        import ray

        port = _free_port()
        self.address = f"{ray.util.get_node_ip_address()}:{port}"  # where the head binds
        self.temp = Path(tempfile.mkdtemp(prefix="r1kit-ray-", dir="/tmp"))  # short: sockets
        self.nodes: list[subprocess.Popen] = []

    def add(self, resources: str) -> int:
        """Start a node with these custom resources (the first is the head); wait until it
        is alive; return its index."""
        index = len(self.nodes)
        log = self.temp / f"node{index}.log"
        common = ["--num-cpus=2", f"--resources={resources}"]
        if index == 0:
            port = self.address.rsplit(":", 1)[1]
            args = ["--head", f"--port={port}", "--include-dashboard=false"]
            args.append(f"--temp-dir={self.temp}")
        else:
            args = [f"--address={self.address}"]
        self.nodes.append(_start([*args, *common], log))
        deadline = time.time() + 120
        while _alive_nodes(self.address) < self.alive:
            assert time.time() < deadline, log.read_text()[-2000:]
            time.sleep(1)
        return index

    @property
    def alive(self) -> int:
        return sum(node.poll() is None for node in self.nodes)

    def kill(self, index: int) -> None:
        """SIGKILL every process of node ``index`` (its raylet, workers, object store)."""
        os.killpg(self.nodes[index].pid, signal.SIGKILL)  # (SIGTERM left its GCS running)
        self.nodes[index].wait(timeout=60)

    def close(self) -> None:
        for index in reversed(range(len(self.nodes))):
            if self.nodes[index].poll() is None:
                self.kill(index)


@pytest.fixture
def cluster(ray_cluster):
    nodes = Cluster()
    try:
        yield nodes
    finally:
        nodes.close()


def _train_cmd(out: Path, tiny_policy_dir: Path, address: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rl.cli",
        "train",
        "recipes/demo.yaml",
        "--out",
        str(out),
        f"model.path={tiny_policy_dir}",
        f"ray.address={address}",
        "data.generator_args={n_sft: 128, n_rl: 256, n_eval: 8, seed: 3, max_terms: 2, max_digits: 1}",
        "sft.steps=4",
        "sft.batch_size=16",
        "grpo.prompts_per_step=4",
        "grpo.group_size=4",
        "grpo.max_new_tokens=16",
        "grpo.kl_coef=0.05",  # every row trained on: logprob_diff covers every sample
        "eval.max_new_tokens=16",
        *overrides,
    ]


def test_train_on_a_three_node_cluster_survives_losing_its_rollout_node(
    cluster, tiny_policy_dir, tmp_path
):
    """Rank 0 and rank 1 on two nodes (FSDP2's gloo group crosses them), the only engine on a
    third, its weights over the collective group across nodes. During GRPO a fourth node
    joins and the engine's node is killed whole (SIGKILL to its raylet, its workers and object
    store): the engine's placement-group bundle moves there, a replacement joins the
    collective group with the current weights, the step is sampled again, and the run ends
    with every step and the restart counted."""
    cluster.add('{"r1kit_learner": 1}')  # the head: rank 0
    cluster.add('{"r1kit_learner": 1}')  # rank 1
    first = cluster.add('{"r1kit_rollout": 1}')
    out = tmp_path / "run"
    cmd = _train_cmd(
        out,
        tiny_policy_dir,
        cluster.address,
        "grpo.steps=12",
        "learner.world_size=2",
        "learner.resources={r1kit_learner: 1}",
        "rollout.resources={r1kit_rollout: 1}",
        "rollout.sync_transport=collective",
    )
    log_path = tmp_path / "train.log"
    train = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=JOIN_ENV)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.time() + TIMEOUT_S
        while not (metrics.is_file() and '"stage": "grpo"' in metrics.read_text()):
            assert train.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        cluster.add('{"r1kit_rollout": 1}')  # room for the engine elsewhere
        killed_after = sum('"stage": "grpo"' in line for line in metrics.read_text().splitlines())
        cluster.kill(first)
        assert train.wait(timeout=TIMEOUT_S) == 0, log_path.read_text()[-3000:]
    finally:
        if train.poll() is None:
            train.kill()
    summary = json.loads((out / "summary.json").read_text())
    learner, rollout = summary["placement"]["learner"], summary["placement"]["rollout"]
    assert len(set(learner)) == 2  # rank 0 and rank 1 on different nodes
    assert len(rollout) == 1 and not set(rollout) & set(learner)  # the engine on a third
    assert "learner ranks on node" in log_path.read_text()  # the plan shows it
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    assert [r["step"] for r in grpo] == list(range(1, 13))
    assert killed_after < 12  # the node died while steps were left
    assert all(r["samples"] == 4 * 4 for r in grpo)
    assert grpo[-1]["rollout_restarts"] >= 1 and grpo[0]["rollout_restarts"] == 0
    for r in grpo:  # the weights crossed nodes intact, to the replacement too
        assert r["sync_bytes"] > 0 or not r["rows_learned"]
        assert r["logprob_diff_max"] < 1e-3, r
    # the one collective sync the dead node was part of fell back to the object store
    fell_back = [i for i, r in enumerate(grpo) if r["sync_fallbacks"]]
    restarted = next(i for i, r in enumerate(grpo) if r["rollout_restarts"])
    assert fell_back in ([], [restarted - 1], [restarted]), (fell_back, restarted)
    assert summary["rollout_restarts"] >= 1 and summary["eval"]["grpo"]["n"] == 8
