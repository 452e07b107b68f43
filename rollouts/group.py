"""Several vLLM rollout workers behind one driver-side interface, surviving a worker's death.

``RolloutGroup`` starts ``num_workers`` engine actors in one Ray placement group (a bundle
per worker), splits each ``generate`` call into contiguous chunks, one per worker, and
reassembles the completions in global prompt order. Prompt ``i`` is always sampled with
seed ``seed + i``, whatever worker serves it, so the result is the one a single engine
returns for the same call and weights, and a re-run chunk gives the same samples again.

When a worker dies mid-call (its actor is gone, or its vLLM engine process is), the group
starts a replacement in the same bundle, brings it to the latest synced weights and re-runs
exactly the failed chunk: nothing is lost or duplicated. Each call tolerates
``max_restarts_per_call`` replacements, then raises ``RolloutWorkerError``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rollouts.engine import VLLMEngine
from rollouts.placement import STRATEGIES
from rollouts.tools import ToolSpec
from rollouts.types import Completion
from rollouts.worker import ENGINE_ENV


class RolloutWorkerError(RuntimeError):
    """A rollout worker kept dying (or its replacement could not start)."""


def split_evenly(total: int, parts: int) -> list[range]:
    """Contiguous ranges covering ``range(total)``, sizes differing by at most one (the
    first ``total % parts`` get the extra item); empty ranges when ``total < parts``.

    >>> split_evenly(7, 3)
    [range(0, 3), range(3, 5), range(5, 7)]
    """
    size, extra = divmod(total, parts)
    bounds = [k * size + min(k, extra) for k in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def worker_died(err: Exception) -> bool:
    """Whether ``err`` means the worker is gone: its actor died (or is unreachable), or its
    vLLM engine process died under a live actor (vLLM then raises ``EngineDeadError`` on
    every call: seen when the engine core is killed). Matched by name so that the driver
    need not import vLLM."""
    if isinstance(err, RayActorError):
        return True
    cause = err.cause if isinstance(err, RayTaskError) else None
    return any(c.__name__ == "EngineDeadError" for c in type(cause).__mro__)


def _part(rows: Sequence[Any] | None, chunk: range) -> list[Any] | None:
    return None if rows is None else [rows[i] for i in chunk]


class RolloutGroup:
    """``num_workers`` rollout engines (Ray actors) used as one; a plain driver-side object.

    Each worker gets one bundle of a placement group: ``bundle`` (default ``{"GPU": 1}``
    where CUDA is available, else ``{"CPU": 0.01}``: a bundle cannot be empty, and a
    reserved whole CPU per engine starves the learner on a small machine) placed by
    ``placement`` (Ray's strategies: "pack", "spread", "strict_pack", "strict_spread").
    ``engine_kwargs`` go to every engine (``VLLMEngine``: dtype, max_model_len, ...);
    worker ``k`` gets engine seed ``seed + k`` (it only matters for unseeded calls).
    ``threads``: OpenMP threads of each CPU engine (default: this machine's cores divided
    among the workers; Ray would give a fractional-CPU actor one thread, and a step's phases
    do not overlap, so generation may use the cores the learner is not using then).
    ``engine_cls`` is the class each actor holds (tests pass a light fake).

    ``actors``: use these running actors as the workers instead of starting any (engines
    colocated with learner ranks, rl/colocated.py; ``model_dir`` and the engine options
    are then theirs). The group does not own them: it neither replaces a dead one (its
    learner rank died with it; the run restarts the learner) nor kills them at shutdown.
    """

    def __init__(
        self,
        model_dir: str,
        num_workers: int,
        *,
        kv_cache_gib: float | None = None,
        seed: int = 0,
        placement: str = "pack",
        bundle: dict[str, float] | None = None,
        resources: dict[str, float] | None = None,
        max_restarts_per_call: int = 2,
        timeout_s: float = 1800,
        engine_cls: type = VLLMEngine,
        threads: int | None = None,
        actors: Sequence[ray.actor.ActorHandle] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if actors is not None:
            num_workers = len(actors)
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if placement.upper() not in STRATEGIES:
            raise ValueError(f"placement must be one of {STRATEGIES} (any case), got {placement!r}")
        self.model_dir = str(model_dir)
        self.num_workers = num_workers
        self.max_restarts_per_call = max_restarts_per_call
        self.timeout_s = timeout_s
        self.bundle = dict(bundle or ({"GPU": 1} if torch.cuda.is_available() else {"CPU": 0.01}))
        self.bundle.update(resources or {})
        self.restarts = 0
        self._seed = seed
        self._engine_kwargs = dict(engine_kwargs, kv_cache_gib=kv_cache_gib)
        env = dict(ENGINE_ENV)
        if not torch.cuda.is_available():
            threads = threads or max(1, (os.cpu_count() or 1) // num_workers)
            env["OMP_NUM_THREADS"] = str(threads)
        extra = {k: v for k, v in self.bundle.items() if k not in ("CPU", "GPU")}
        self._actor_cls = ray.remote(
            num_cpus=self.bundle.get("CPU", 0),  # must fit the bundle it is scheduled into
            num_gpus=self.bundle.get("GPU", 0),
            resources=extra or None,
            max_restarts=0,  # the group replaces a dead worker itself, with the latest weights
            runtime_env={"env_vars": env},
        )(engine_cls)
        # the latest sync, for replacements (or what gives it, after a collective sync)
        self._weights: ray.ObjectRef | Callable[[], ray.ObjectRef] | None = None
        self._version: int | None = None  # and the version it was labelled with
        self._group_restarts: int | None = None  # restarts when the weight-sync group formed
        self._samples = [0] * num_workers
        self._restarts = [0] * num_workers
        self.colocated = actors is not None
        if self.colocated:
            self._pg = None
            self.workers = list(actors)
            return
        self._pg = placement_group([dict(self.bundle)] * num_workers, strategy=placement.upper())
        self.workers: list[ray.actor.ActorHandle] = []
        try:
            ray.get(self._pg.ready(), timeout=timeout_s)
            for slot in range(num_workers):
                self.workers.append(self._start(slot))
            ray.get([w.__ray_ready__.remote() for w in self.workers], timeout=timeout_s)
        except BaseException:
            self.shutdown()
            raise

    # -- what the trainer calls --------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 64,
        seed: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        tools: ToolSpec | None = None,
        rows: Sequence[dict[str, Any]] | None = None,
        on_early: Callable[[list[Completion]], None] | None = None,
    ) -> list[Completion]:
        """``VLLMEngine.generate`` over all workers: ``len(prompts) * n`` completions grouped
        by prompt in input order, ``prompt_index`` global; prompt ``i`` seeded ``seed + i``.
        With ``tools``, multi-turn episodes (each worker runs its own samples' tool calls);
        ``rows`` are the prompts' rows, for the environments.

        ``on_early(part)``: called with each worker's completions that arrive while another
        worker is still generating (e.g. to score them meanwhile); the last part is not."""
        chunks = [c for c in split_evenly(len(prompts), self.num_workers) if len(c)]

        def submit(slot: int, worker: ray.actor.ActorHandle) -> ray.ObjectRef:
            chunk = chunks[slot]
            return worker.generate.remote(
                [prompts[i] for i in chunk],
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                seed=seed,
                seed_offset=chunk.start,
                stop_token_ids=stop_token_ids,
                **({} if tools is None else {"tools": tools, "rows": _part(rows, chunk)}),
            )

        def arrived(slot: int, part: list[Completion], early: bool) -> None:
            for c in part:
                c.prompt_index += chunks[slot].start
            self._samples[slot] += len(part)
            if early and on_early is not None:
                on_early(part)

        results = self._fan_out(submit, len(chunks), restore_weights=True, on_result=arrived)
        return [c for part in results for c in part]

    def update_weights(
        self, buckets: ray.ObjectRef | bytes | Sequence[bytes], version: int | None = None
    ) -> list[int]:
        """Load the same weights into every worker (an ObjectRef to ``pack_buckets`` blobs or
        bucket file paths, as the learner exports them, or those); returns the tensors loaded
        per worker. Bucket files must stay until the next sync (a replacement reads them).
        ``version`` labels the weights (``Completion.weight_version``); an empty list with a
        version relabels the weights the workers hold.

        Every sync is taken to be the full state (as the trainer's are): the group keeps a
        reference to the latest one only (one copy in Ray's object store), and a replacement
        worker loads ``model_dir`` and then that. A worker's update runs after the calls
        already queued on it: generation in flight finishes with the weights it started with.
        """
        relabel = isinstance(buckets, list | tuple) and not buckets
        ref = buckets if isinstance(buckets, ray.ObjectRef) or relabel else ray.put(buckets)
        label = {} if version is None else {"version": version}
        loaded = self._fan_out(
            lambda _, worker: worker.update_weights.remote(ref, **label),
            self.num_workers,
            # the retried call itself brings a replacement up to date, unless it only relabels
            restore_weights=relabel,
        )
        if not relabel:
            self._weights = ref
        self._version = version if version is not None else self._version
        return loaded

    def join_weight_group(self, host: str, port: int, backend: str) -> list[ray.ObjectRef]:
        """Every worker joins the weight-sync group (rollouts/weight_transfer.py) as members
        1..n; member 0, the sender, joins apart. The refs complete once all members have."""
        self._group_restarts = self.restarts
        world = self.num_workers + 1
        return [
            worker.join_weight_group.remote(host, port, slot + 1, world, backend)
            for slot, worker in enumerate(self.workers)
        ]

    @property
    def weight_group_current(self) -> bool:
        """Whether every worker is in the weight-sync group (no replacement since it formed)."""
        return self._group_restarts == self.restarts

    def receive_weights(
        self,
        buckets: Sequence[Sequence[Any]],
        version: int | None,
        restore: Callable[[], ray.ObjectRef],
    ) -> list[int]:
        """Every worker receives the sync member 0 broadcasts (``buckets``: its layout, as
        ``VLLMEngine.receive_weights`` takes it); the tensors loaded per worker. ``restore()``
        gives the same weights as blobs: called only if a worker is replaced before the next
        sync. A worker that dies meanwhile fails the whole sync (RolloutWorkerError): it is
        replaced by the next call that needs it, and the group must form again."""
        refs = [worker.receive_weights.remote(buckets, version) for worker in self.workers]
        try:
            loaded = ray.get(refs, timeout=self.timeout_s)
        except Exception as err:
            self._group_restarts = None
            raise RolloutWorkerError(f"collective weight sync failed: {err}") from err
        self._weights, self._version = restore, version
        return loaded

    def node_ids(self) -> list[str]:
        """The Ray node each worker runs on."""
        return self._fan_out(
            lambda _, w: w.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()),
            self.num_workers,
            restore_weights=False,
        )

    def fingerprints(self) -> list[dict[str, str]]:
        """Every worker's ``VLLMEngine.fingerprint()`` (equal dicts: bit-identical weights)."""
        return self._fan_out(
            lambda _, worker: worker.fingerprint.remote(), self.num_workers, restore_weights=True
        )

    def speculative_counts(self) -> dict[str, int]:
        """vLLM's speculative-decoding counters (``VLLMEngine.speculative_counts``) summed
        over the workers; a replaced worker's start again from 0."""
        parts = self._fan_out(
            lambda _, worker: worker.speculative_counts.remote(),
            self.num_workers,
            restore_weights=True,
        )
        return dict(sum(map(Counter, parts), Counter()))

    def stats(self) -> dict[str, Any]:
        """Restarts (total and per worker) and completions served per worker, since start."""
        return {
            "workers": self.num_workers,
            "restarts": self.restarts,
            "restarts_per_worker": list(self._restarts),
            "samples_per_worker": list(self._samples),
        }

    def shutdown(self) -> None:
        """Kill the workers and remove the placement group (idempotent); colocated
        workers are their learner's to end."""
        for worker in [] if self.colocated else self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []
        if self._pg is not None:
            remove_placement_group(self._pg)
            self._pg = None

    # -- workers and their replacement -------------------------------------------------------

    def _start(self, slot: int) -> ray.actor.ActorHandle:
        """A new engine actor in bundle ``slot`` (not waited for)."""
        strategy = PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=slot)
        return self._actor_cls.options(scheduling_strategy=strategy).remote(
            self.model_dir, seed=self._seed + slot, **self._engine_kwargs
        )

    def _replace(self, slot: int, restore_weights: bool) -> None:
        """Kill worker ``slot`` (it may be alive with a dead engine, holding its bundle),
        start a new one in the same bundle and, if asked, load the latest weights into it.

        When the worker's node died, Ray moves its bundle to a node with room, but only
        once it has noticed the death: a replacement started before that lands on the
        dead node and dies with it. Such a replacement is started again (up to
        ``max_restarts_per_call`` times) after the placement group is whole again."""
        if self.colocated:
            raise RolloutWorkerError(
                f"rollout worker {slot} is colocated with learner rank {slot}, which died "
                "with it: the learner restarts both"
            )
        ray.kill(self.workers[slot], no_restart=True)
        self.restarts += 1
        self._restarts[slot] += 1
        for attempt in range(self.max_restarts_per_call + 1):
            worker = self.workers[slot] = self._start(slot)
            try:
                ray.get(self._readied(worker, restore_weights), timeout=self.timeout_s)
                return
            except Exception as err:
                if not worker_died(err) or attempt == self.max_restarts_per_call:
                    raise RolloutWorkerError(
                        f"replacement for rollout worker {slot} failed: {err}"
                    ) from err
                if not self._pg.wait(timeout_seconds=self.timeout_s):
                    raise RolloutWorkerError(
                        f"replacement for rollout worker {slot} died ({err}) and no node "
                        f"took its bundle {dict(self.bundle)} in {self.timeout_s}s"
                    ) from err

    def _readied(self, worker: ray.actor.ActorHandle, restore_weights: bool) -> list:
        """A new worker's readiness and, if asked, its load of the latest weights."""
        ready = [worker.__ray_ready__.remote()]
        label = {} if self._version is None else {"version": self._version}
        if restore_weights and (self._weights is not None or label):
            weights = [] if self._weights is None else self._weights
            if callable(weights):  # the last sync was collective: its weights as blobs
                weights = weights()
            ready.append(worker.update_weights.remote(weights, **label))  # runs after __init__
        return ready

    def _fan_out(
        self,
        submit: Callable[[int, ray.actor.ActorHandle], ray.ObjectRef],
        num_calls: int,
        *,
        restore_weights: bool,
        on_result: Callable[[int, Any, bool], None] | None = None,
    ) -> list[Any]:
        """Call ``submit(slot, worker)`` for slots ``0..num_calls-1`` in parallel and return
        the results in slot order. A dead worker is replaced (with the latest weights if
        ``restore_weights``) while the others keep running, and its call submitted again.
        ``on_result(slot, result, others_pending)`` runs on each result as it arrives."""
        pending = {submit(slot, self.workers[slot]): slot for slot in range(num_calls)}
        results: dict[int, Any] = {}
        restarts = 0
        deadline = time.monotonic() + self.timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                slots = sorted(pending.values())
                raise TimeoutError(f"rollout workers {slots} gave no result in {self.timeout_s}s")
            slot = pending.pop(ready[0])
            try:
                results[slot] = ray.get(ready[0])
            except Exception as err:
                if not worker_died(err):
                    raise
                restarts += 1
                if restarts > self.max_restarts_per_call:
                    raise RolloutWorkerError(
                        f"rollout worker {slot} died and {self.max_restarts_per_call} "
                        f"replacement(s) in this call did not help: {err}"
                    ) from err
                self._replace(slot, restore_weights)
                pending[submit(slot, self.workers[slot])] = slot
                continue
            if on_result is not None:
                on_result(slot, results[slot], bool(pending))
        return [results[slot] for slot in range(num_calls)]
