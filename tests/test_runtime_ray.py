"""RayBackend on a local Ray cluster (one per module) with a real tiny model in the rollout actors.

Rollouts are greedy, so every group can be checked against the learner's own engine loaded with the
weights of the version the group claims: the weights that travelled are the weights that generated.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from asympo.data.arithmetic import ArithmeticConfig, arithmetic_problems  # noqa: E402
from asympo.engines.base import SamplingParams  # noqa: E402
from asympo.engines.torch import TorchEngine  # noqa: E402
from asympo.models.tiny import TinyModelConfig, build_tiny_model, save_pretrained  # noqa: E402
from asympo.models.tokenizer import build_char_tokenizer  # noqa: E402
from asympo.runtime.backend import WorkerSpec  # noqa: E402
from asympo.runtime.buffer import BufferConfig  # noqa: E402
from asympo.runtime.ray import RayBackend, actor_options, init_ray, reserve_learner_ranks  # noqa: E402
from asympo.runtime.records import RolloutGroup  # noqa: E402
from asympo.runtime.scheduler import PromptScheduler  # noqa: E402
from asympo.runtime.staleness import make_policy  # noqa: E402

N, G = 4, 2  # prompts per step, samples per prompt
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=4)


@pytest.fixture(scope="module")
def cluster():
    assert not ray.is_initialized()
    assert init_ray(num_cpus=2) is True
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny Llama saved in HF format; a large init std makes its outputs depend on its weights."""
    tok = build_char_tokenizer()
    cfg = TinyModelConfig(
        hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, init_std=0.5
    )
    model = build_tiny_model(cfg, tok)
    path = save_pretrained(model, tok, tmp_path_factory.mktemp("tiny") / "model")
    return str(path), TorchEngine(model, tok), {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def problems():
    return arithmetic_problems(ArithmeticConfig(digits=1, n_train=60, n_test=0), "train")


def weights(base: dict, version: int) -> dict:
    """What the learner publishes as `version`: version 0 is the saved model, later ones are perturbed."""
    if version == 0:
        return base
    g = torch.Generator().manual_seed(version)
    return {k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in base.items()}


class Reference:
    """Greedy responses of the learner-side engine with the weights of a given version."""

    def __init__(self, tiny):
        _, self.engine, self.base = tiny
        self.cache: dict[tuple[int, str], list[int]] = {}

    def __call__(self, version: int, prompt: str) -> list[int]:
        if (version, prompt) not in self.cache:
            self.engine.load_weights(weights(self.base, version), version)
            (c,) = self.engine.generate([prompt], GREEDY, n=1)
            self.cache[(version, prompt)] = c.response_ids
        return self.cache[(version, prompt)]


def make_backend(tiny, problems, buffer: BufferConfig, reward="arithmetic", **kw) -> RayBackend:
    path, _, _ = tiny
    spec = WorkerSpec(
        engine="torch", model_path=path, sampling=GREEDY, reward=reward, engine_kwargs={"device": "cpu"}
    )
    scheduler = PromptScheduler(
        problems, prompts_per_step=N, group_size=G, policy=make_policy(buffer), seed=0
    )
    kw.setdefault("batch_timeout_s", 120)
    return RayBackend(spec, scheduler, **kw)


def train(backend: RayBackend, base: dict, start: int, steps: int) -> list[list[RolloutGroup]]:
    """Play the learner: take a batch at each version, then publish the next weights."""
    out = []
    for v in range(start, start + steps):
        batch = backend.next_batch(v, N)
        assert batch.learner_version == v and len(batch.groups) == N
        out.append(batch.groups)
        backend.publish(weights(base, v + 1), v + 1)
    return out


def check_generated_by(groups: list[RolloutGroup], ref: Reference, problems) -> None:
    prompts = {p.id: p.prompt for p in problems}
    for g in groups:
        assert isinstance(g, RolloutGroup) and len(g.samples) == G
        assert all(s.policy_version == g.policy_version for s in g.samples)
        expected = ref(g.policy_version, prompts[g.problem_id])
        assert all(s.response_ids == expected for s in g.samples), (g.group_id, g.policy_version)


def wait_until(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------- no cluster


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "asympo.runtime.ray")
    with pytest.raises(ImportError, match=r"pip install 'asympo\[ray\]'"):
        importlib.import_module("asympo.runtime.ray")


def test_actor_options():
    spec = WorkerSpec(engine="torch", model_path="m", sampling=GREEDY, reward="arithmetic", threads=2)
    assert actor_options(spec, None) == {"num_cpus": 2}
    gpu = WorkerSpec(**{**spec.__dict__, "engine_kwargs": {"device": "cuda"}})
    assert actor_options(gpu, {"num_cpus": 4}) == {"num_cpus": 4, "num_gpus": 1}
    with pytest.raises(ValueError, match="worker_resources has unknown keys \\['gpus'\\]"):
        actor_options(spec, {"gpus": 1})


def test_rejects_bad_arguments(tiny, problems):
    with pytest.raises(ValueError, match="num_workers must be an int >= 1"):
        make_backend(tiny, problems, BufferConfig(), num_workers=0)
    with pytest.raises(ValueError, match="max_prompts_per_call must be an int >= 1"):
        make_backend(tiny, problems, BufferConfig(), max_tasks_per_call=0)


# ---------------------------------------------------------------------------------------------- cluster


def test_local_cluster_listens_on_loopback_only(cluster):
    import psutil

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert init_ray() is False  # already initialised: not ours to shut down
    listening = [
        c.laddr.ip
        for p in psutil.Process().children(recursive=True)
        for c in getattr(p, "net_connections", p.connections)(kind="inet")  # psutil < 6: connections
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "found no Ray servers to check"
    assert all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for ip in listening), listening


def test_learner_ranks_hold_a_placement_group_on_the_driver_node(cluster):
    """A multi-rank learner's reservation: one bundle per rank on the driver's node, taken out of the pool
    (here: the 2-CPU cluster cannot reserve 2 more ranks while 1 is held, nor could a rollout actor)."""
    from ray.util.placement_group import placement_group_table, remove_placement_group

    pg = reserve_learner_ranks(1, {"CPU": 1})
    try:
        table = placement_group_table(pg)
        assert table["state"] == "CREATED" and table["strategy"] == "STRICT_PACK"
        assert set(table["bundles_to_node_id"].values()) == {ray.get_runtime_context().get_node_id()}
        with pytest.raises(RuntimeError, match=r"cannot reserve 2 learner rank\(s\) of \{'CPU': 1\}"):
            reserve_learner_ranks(2, {"CPU": 1}, timeout_s=2)
    finally:
        remove_placement_group(pg)


def test_wait_policy_versions_bound_and_close(cluster, tiny, problems):
    buffer = BufferConfig(max_staleness=2, policy="wait")
    backend = make_backend(tiny, problems, buffer, num_workers=2)
    backend.start(weights(tiny[2], 0), 0)
    actors = [s.actor for s in backend.slots]
    try:
        steps = train(backend, tiny[2], 0, 6)
    finally:
        backend.close()
    ref = Reference(tiny)
    for v, groups in enumerate(steps):
        check_generated_by(groups, ref, problems)
        assert max(v - g.policy_version for g in groups) <= 2
    # Steps 0..2 were all generated by version 0 (sent before any update): the run is asynchronous.
    assert max(v - g.policy_version for v, gs in enumerate(steps) for g in gs) >= 1
    ids = [g.group_id for gs in steps for g in gs]
    assert len(ids) == len(set(ids)) == 6 * N
    assert {g.worker for gs in steps for g in gs} == {0, 1}
    assert backend.metrics()["workers/restarts"] == 0.0
    # close() leaves no actor behind: they are dead and their CPUs are free again.
    for a in actors:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(a.ready.remote(), timeout=30)
    wait_until(lambda: ray.available_resources().get("CPU") == 2.0, timeout=30)
    backend.close()  # idempotent


def test_drop_policy_drops_stale_groups_and_accounts_for_every_prompt(cluster, tiny, problems):
    buffer = BufferConfig(max_staleness=0, policy="drop", max_ahead=2)
    backend = make_backend(tiny, problems, buffer)
    backend.start(weights(tiny[2], 0), 0)
    try:
        steps = train(backend, tiny[2], 0, 4)
        dropped = backend.metrics()["dropped/stale"]
    finally:
        backend.close()
    for v, groups in enumerate(steps):
        assert {g.policy_version for g in groups} == {v}
    # Steps 1 and 2 were generated ahead by version 0: they were dropped and replaced.
    assert dropped >= N and dropped == len(backend.buffer.dropped)
    trained = [g.group_id for gs in steps for g in gs]
    state = backend.state_dict()
    pending = [g["group_id"] for g in state["buffer"]["groups"]] + [
        r["group_id"] for r in state["scheduler"]["requeue"]
    ]
    accounted = trained + [r.group_id for r in backend.buffer.dropped] + pending
    assert sorted(accounted) == list(range(backend.scheduler.next_group_id))


def test_fixed_delay_is_exact(cluster, tiny, problems):
    d = 2
    backend = make_backend(tiny, problems, BufferConfig(fixed_delay=d), max_tasks_per_call=3)
    backend.start(weights(tiny[2], 0), 0)
    try:
        steps = train(backend, tiny[2], 0, 6)
    finally:
        backend.close()
    ref = Reference(tiny)
    for v, groups in enumerate(steps):
        assert {g.batch_index for g in groups} == {v}
        assert {g.policy_version for g in groups} == {max(0, v - d)}
        check_generated_by(groups, ref, problems)
    # The check has teeth: the versions' greedy responses differ.
    p = problems[0].prompt
    assert len({tuple(ref(v, p)) for v in range(4)}) > 1


def test_state_dict_round_trip_keeps_buffered_groups_and_inflight_prompts(cluster, tiny, problems):
    buffer = BufferConfig(max_staleness=1, policy="wait")
    slow = "tests.ray_fakes:slow_reward"
    a = make_backend(tiny, problems, buffer, reward=slow, max_tasks_per_call=1)
    a.start(weights(tiny[2], 0), 0)
    try:
        # One group per call: stop when some groups are buffered and others are still being generated.
        wait_until(lambda: len(a.buffer) >= 1)
        state = json.loads(json.dumps(a.state_dict()))
    finally:
        a.close()
    buffered = {g["group_id"] for g in state["buffer"]["groups"]}
    inflight = {r["group_id"] for r in state["scheduler"]["requeue"]}
    assert buffered and inflight and not buffered & inflight
    assert buffered | inflight == set(range(2 * N))  # steps 0 and 1 were issued, nothing else

    b = make_backend(tiny, problems, buffer)
    b.load_state_dict(state)
    assert [g.to_json() for g in b.buffer.pending()] == state["buffer"]["groups"]
    b.start(weights(tiny[2], 0), 0)
    try:
        steps = train(b, tiny[2], 0, 3)
    finally:
        b.close()
    trained = [g for gs in steps for g in gs]
    ids = [g.group_id for g in trained]
    assert len(ids) == len(set(ids))
    assert buffered | inflight <= set(ids)
    by_id = {g.group_id: g for g in trained}
    for r in state["scheduler"]["requeue"]:  # same prompt, same step as before the checkpoint
        assert (by_id[r["group_id"]].problem_id, by_id[r["group_id"]].batch_index) == (
            r["problem_id"],
            r["batch_index"],
        )
    check_generated_by(trained, Reference(tiny), problems)


def test_killed_actor_is_restarted_with_old_weights_and_its_prompts_requeued(cluster, tiny, problems):
    # fixed_delay: the restarted actor must be handed the exact old versions its re-queued prompts need.
    d = 2
    backend = make_backend(tiny, problems, BufferConfig(fixed_delay=d), reward="tests.ray_fakes:slow_reward")
    requeued: list[int] = []
    requeue = backend.scheduler.requeue
    backend.scheduler.requeue = lambda ids: (requeued.extend(ids), requeue(ids))
    backend.start(weights(tiny[2], 0), 0)
    try:
        steps = train(backend, tiny[2], 0, 3)
        slot = backend.slots[0]
        wait_until(lambda: slot.call is not None)
        with backend.lock:
            lost = sorted(t.group_id for t in slot.tasks)
            lost_versions = {t.versions.exact for t in slot.tasks}
        ray.kill(slot.actor)
        steps += train(backend, tiny[2], 3, 3)
        assert backend.slots[0].actor is not slot.actor
        assert backend.metrics()["workers/restarts"] == 1.0
    finally:
        backend.close()
    assert lost and requeued == lost
    assert min(lost_versions) >= 1  # generated again with weights older than the newest
    ids = [g.group_id for gs in steps for g in gs]
    assert len(ids) == len(set(ids)) == 6 * N and set(lost) <= set(ids)
    for v, groups in enumerate(steps):
        assert {g.policy_version for g in groups} == {max(0, v - d)}
    check_generated_by([g for gs in steps for g in gs], Reference(tiny), problems)


def test_worker_that_cannot_start_fails_start(cluster, tiny, problems, tmp_path):
    backend = make_backend((str(tmp_path / "no-model"), None, None), problems, BufferConfig())
    with pytest.raises(RuntimeError, match="rollout workers did not start"):
        backend.start(weights(tiny[2], 0), 0)
    assert backend.slots == []
