"""RolloutGroup: several rollout workers used as one, surviving a worker's death.

The first tests run the group's bookkeeping over light fake engines (a Ray actor each, no
vLLM); the e2e ones over real vLLM engines, against the session's single engine.
"""

import threading
import time

import pytest
import ray

from rollouts import RolloutGroup, RolloutWorkerError
from tests.rollouts.fakes import BAD, DIE, FakeEngine

pytestmark = pytest.mark.slow

TIMEOUT_S = 300  # a hang fails the test instead of stalling the suite


@pytest.fixture(scope="module")
def fakes(ray_cluster):
    """Three fake workers, shared: each test pushes its own weights and checks differences."""
    group = RolloutGroup("policy", 3, engine_cls=FakeEngine, timeout_s=TIMEOUT_S)
    yield group
    group.shutdown()


PROMPTS = [[10 * i, 10 * i + 1] for i in range(7)]  # 7 over 3 workers: chunks of 3, 2, 2


def one_engine(prompts, weights, **kw):
    """What a single engine holding ``weights`` returns for the whole call."""
    engine = FakeEngine("policy")
    engine.update_weights(weights)
    return engine.generate(prompts, **kw)


def changed(before, after):
    """Per-worker counters of ``stats()`` that moved between two calls."""
    return {
        k: [b - a for a, b in zip(before[k], after[k], strict=True)]
        for k in before
        if k.endswith("_per_worker")
    }


def test_chunks_come_back_in_prompt_order_seeded_as_by_one_engine(fakes):
    assert fakes.update_weights(b"v0") == [1, 1, 1]
    before = fakes.stats()
    out = fakes.generate(PROMPTS, n=2, seed=100)
    assert out == one_engine(PROMPTS, b"v0", n=2, seed=100)
    # prompt 5 (second of worker 2's chunk) got seed 105 and its global index
    assert out[10].prompt_index == 5 and out[10].token_ids == [50, 51, 105, 0]
    assert changed(before, fakes.stats()) == {
        "restarts_per_worker": [0, 0, 0],
        "samples_per_worker": [6, 4, 4],
    }
    # fewer prompts than workers: the third one idles
    assert fakes.generate(PROMPTS[:2], seed=0) == one_engine(PROMPTS[:2], b"v0", seed=0)


def test_parts_that_arrive_while_others_generate_are_handed_over_early(fakes):
    fakes.update_weights(b"v0")
    early = []
    out = fakes.generate(PROMPTS, n=2, seed=100, on_early=early.append)
    assert out == one_engine(PROMPTS, b"v0", n=2, seed=100)  # the same objects, in order
    assert len(early) == 2  # every worker's part but the last to arrive
    handed = [c for part in early for c in part]
    assert all(any(c is o for o in out) for c in handed)  # with global prompt indices
    assert sorted(len(p) for p in early) in ([4, 4], [4, 6])


def test_a_killed_worker_is_replaced_with_the_latest_weights_and_its_chunk_rerun(fakes):
    fakes.update_weights(b"v1")
    before, dead = fakes.stats(), fakes.workers[1]
    ray.kill(dead, no_restart=True)
    out = fakes.generate(PROMPTS, n=2, seed=100)
    # text carries the weights: the replacement loaded "v1" before re-running prompts 3-4
    assert out == one_engine(PROMPTS, b"v1", n=2, seed=100)
    assert fakes.workers[1] != dead
    assert fakes.restarts == before["restarts"] + 1
    assert changed(before, fakes.stats()) == {
        "restarts_per_worker": [0, 1, 0],
        "samples_per_worker": [6, 4, 4],  # the failed attempt served nothing
    }


def test_a_dead_engine_under_a_live_actor_is_a_dead_worker(fakes):
    fakes.update_weights(b"v2")
    restarts, broken = fakes.restarts, fakes.workers[0]
    ray.get(broken.kill_engine.remote(), timeout=TIMEOUT_S)
    assert fakes.generate(PROMPTS, seed=0) == one_engine(PROMPTS, b"v2", seed=0)
    assert fakes.restarts == restarts + 1
    with pytest.raises(ray.exceptions.RayActorError):  # killed: it held its bundle
        ray.get(broken.__ray_ready__.remote(), timeout=TIMEOUT_S)


def test_a_worker_dying_during_a_sync_gets_the_new_weights(fakes):
    restarts = fakes.restarts
    ray.kill(fakes.workers[2], no_restart=True)
    assert fakes.update_weights([b"v", b"3"]) == [2, 2, 2]
    assert fakes.fingerprints() == [{"weights": "v3"}] * 3
    assert fakes.restarts == restarts + 1


def test_a_worker_that_keeps_dying_fails_the_call_after_bounded_restarts(fakes):
    restarts = fakes.restarts
    with pytest.raises(RolloutWorkerError, match="rollout worker 2 died"):
        fakes.generate([*PROMPTS[:6], DIE], seed=0)  # DIE lands on worker 2 every time
    assert fakes.restarts == restarts + 2  # died 3 times, replaced twice
    # the next call replaces the dead worker again and succeeds
    assert fakes.generate(PROMPTS, seed=0) == one_engine(PROMPTS, b"v3", seed=0)
    assert fakes.restarts == restarts + 3


def test_an_ordinary_error_propagates_without_a_restart(fakes):
    restarts = fakes.restarts
    with pytest.raises(ValueError, match="bad prompt"):
        fakes.generate([BAD, *PROMPTS], seed=0)
    assert fakes.restarts == restarts


def test_vllms_dead_engine_error_counts_as_a_death_and_other_errors_do_not():
    """The group matches vLLM's EngineDeadError by name (the driver need not import vLLM):
    pin the name to vLLM's real class, as Ray hands it back from an actor call."""
    from ray.exceptions import RayTaskError
    from vllm.v1.engine.exceptions import EngineDeadError

    from rollouts.group import worker_died

    def raised(err):
        return RayTaskError("generate", "traceback", err).as_instanceof_cause()

    assert worker_died(raised(EngineDeadError()))
    assert not worker_died(raised(ValueError("bad prompt")))
    assert not worker_died(ValueError("bad prompt"))


# -- real vLLM engines --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def group(ray_cluster, tiny_policy_dir):
    """Two vLLM workers (with the session's ``rollout_worker``, three engines at peak)."""
    group = RolloutGroup(tiny_policy_dir, 2, dtype="float32", max_model_len=128, timeout_s=600)
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def policy(tiny_policy_dir):
    from model import load_policy

    return load_policy(tiny_policy_dir)


def blob(state):
    from model import to_vllm_weights
    from rollouts.engine import pack_weights

    return pack_weights(to_vllm_weights(state.items()))


def chat(tok, questions):
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False
        )
        for q in questions
    ]


QUESTIONS = ("1+2", "34-5", "9+9", "70-8", "5+55", "12-3")


def key(completions):
    return [(c.prompt_index, c.token_ids, c.finish_reason) for c in completions]


@pytest.mark.e2e
def test_two_workers_sample_token_for_token_what_one_engine_samples(group, rollout_worker, policy):
    model, tok = policy
    weights = blob(model.state_dict())
    loaded = ray.get(rollout_worker.update_weights.remote(weights), timeout=TIMEOUT_S)
    assert group.update_weights(weights) == [loaded] * 2
    assert group.fingerprints() == [ray.get(rollout_worker.fingerprint.remote())] * 2
    prompts = chat(tok, QUESTIONS)
    kw = dict(n=4, temperature=1.0, max_tokens=16, seed=3)
    one = ray.get(rollout_worker.generate.remote(prompts, **kw), timeout=TIMEOUT_S)
    two = group.generate(prompts, **kw)
    assert len(two) == 6 * 4 and key(two) == key(one)
    assert len({tuple(c.token_ids) for c in two}) > 12  # real sampling, not one repeated answer
    for a, b in zip(one, two, strict=True):  # same tokens; logprobs to summation order
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-5


@pytest.mark.e2e
def test_a_worker_killed_mid_generate_is_replaced_and_nothing_is_lost(group, policy):
    from tests.rollouts.test_engine import perturbed

    model, tok = policy
    group.update_weights(blob(model.state_dict()))
    initial = group.fingerprints()[0]
    group.update_weights(blob(perturbed(model)))
    prompts = chat(tok, QUESTIONS)
    kw = dict(n=4, temperature=1.0, max_tokens=16, seed=11)
    expected = group.generate(prompts, **kw)

    victim, restarts = group.workers[1], group.restarts
    victim.__ray_call__.remote(lambda engine: time.sleep(5))  # its chunk queues behind this
    killer = threading.Timer(1.0, ray.kill, (victim,), {"no_restart": True})
    killer.start()
    out = group.generate(prompts, **kw)  # worker 1 dies with prompts 3-5 in flight
    killer.join()

    assert len(out) == 6 * 4 and key(out) == key(expected)
    assert group.restarts == restarts + 1 and group.workers[1] != victim
    fingerprints = group.fingerprints()  # the replacement holds the synced weights
    assert fingerprints[1] == fingerprints[0] != initial


@pytest.mark.e2e
def test_a_bucketed_sync_gives_every_worker_the_same_weights(group, policy):
    from model import to_vllm_weights
    from rollouts.engine import pack_buckets
    from tests.rollouts.test_engine import perturbed

    model, _ = policy
    before = group.fingerprints()
    named = list(to_vllm_weights(perturbed(model, seed=7).items()))
    buckets = ray.put(pack_buckets(named, bucket_bytes=2**20))  # as the learner ships them
    assert group.update_weights(buckets) == [len(named)] * 2
    after = group.fingerprints()
    assert after[0] == after[1]
    assert {k for k in after[0] if after[0][k] != before[0][k]}  # they did change


def collective_sync(group, named, version, restore, *, kill=None):
    """Push ``named`` to ``group`` over a weight-sync group whose member 0 is this process
    (as the learner's rank 0 is in a run): form it if needed, broadcast 1 MB buckets from a
    thread while the workers receive. ``kill``: a worker killed just before the broadcast."""
    from rollouts.engine import split_buckets
    from rollouts.weight_transfer import WeightGroup, flatten
    from tests.rollouts.test_weight_transfer import free_port

    host, port = ray.util.get_node_ip_address(), free_port()
    joins = group.join_weight_group(host, port, "gloo")
    sender = WeightGroup(host, port, 0, group.num_workers + 1, timeout_s=120)
    ray.get(joins, timeout=TIMEOUT_S)
    assert group.weight_group_current
    outgoing = [flatten(bucket) for bucket in split_buckets(named, 2**20)]
    sent = []

    def send():
        try:
            for buffer, _ in outgoing:
                sender.broadcast(buffer)
            sent.append("all")
        except Exception as err:  # noqa: BLE001 - as the learner does: leave, re-raise there
            sender.close()
            sent.append(err)

    if kill is not None:
        ray.kill(kill, no_restart=True)
    thread = threading.Thread(target=send)
    thread.start()
    try:
        return group.receive_weights([m for _, m in outgoing], version, restore)
    finally:
        thread.join(timeout=TIMEOUT_S)
        assert sent, "the sender hung"


@pytest.mark.e2e
def test_a_collective_sync_gives_every_worker_and_a_replacement_the_same_weights(group, policy):
    from model import to_vllm_weights
    from rollouts.engine import pack_buckets
    from tests.rollouts.test_engine import perturbed

    model, _ = policy
    named = list(to_vllm_weights(perturbed(model, seed=9).items()))
    assert group.update_weights(ray.put(pack_buckets(named, bucket_bytes=2**20)))
    expected = group.fingerprints()[0]  # what the object store's sync of them computes with
    group.update_weights(blob(model.state_dict()))
    assert group.fingerprints()[0] != expected

    restored = []

    def restore():
        restored.append(1)
        return ray.put(pack_buckets(named, bucket_bytes=2**20))

    assert collective_sync(group, named, 5, restore) == [len(named)] * 2
    assert group.fingerprints() == [expected] * 2 and not restored

    # a worker replaced before the next sync gets the collective sync's weights as blobs
    ray.kill(group.workers[0], no_restart=True)
    assert group.fingerprints() == [expected] * 2 and restored == [1]
    assert not group.weight_group_current  # the replacement is in no group: form it again
    original = list(to_vllm_weights(model.state_dict().items()))
    assert collective_sync(group, original, 6, restore) == [len(original)] * 2
    assert group.fingerprints()[0] == group.fingerprints()[1] != expected


@pytest.mark.e2e
def test_a_worker_killed_before_a_collective_sync_fails_it_promptly(group, policy):
    from model import to_vllm_weights
    from tests.rollouts.test_engine import perturbed

    model, _ = policy
    named = list(to_vllm_weights(perturbed(model, seed=13).items()))
    t0 = time.time()
    with pytest.raises(RolloutWorkerError, match="collective weight sync failed"):
        collective_sync(group, named, 7, lambda: None, kill=group.workers[1])
    assert time.time() - t0 < 60  # not the group's 120 s timeout
    assert not group.weight_group_current
    # what a run does then: the same weights through the object store, which replaces it
    restarts = group.restarts
    assert group.update_weights(blob(perturbed(model, seed=13))) == [len(named)] * 2
    assert group.restarts == restarts + 1
    assert group.fingerprints()[0] == group.fingerprints()[1]
