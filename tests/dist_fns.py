"""Entry points run on each learner rank by the distributed tests (module level, so spawn can import them)."""

from __future__ import annotations

import os

import torch

from tests.models import tiny_qwen2


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 61, (5, 12), generator=g)
    weights = torch.randn(5, generator=g)
    return ids, weights


def _seq_loss(model, ids, weights):
    logits = model(input_ids=ids).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logp.mean(-1) * weights).sum()


def reference_step() -> dict:
    """One process: the whole batch's seq-mean loss, its gradient norm and the weights after one AdamW step."""
    torch.manual_seed(0)
    model = tiny_qwen2(seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids, w = _batch()
    (_seq_loss(model, ids, w) / len(ids)).backward()
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
    opt.step()
    return {"norm": norm, "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def sharded_step(ckpt_dir: str) -> dict:
    """Each rank: its share of the batch, normalised by the global count, FSDP2-sharded; then a sharded
    checkpoint round trip into a differently initialised model."""
    from asympo.distributed import full_state_dict, init_from_env, load_sharded, save_sharded, shard_model

    torch.set_num_threads(1)
    ctx = init_from_env("cpu")
    model = shard_model(tiny_qwen2(seed=0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids, w = _batch()
    sl = ctx.shard(len(ids))  # uneven: 3 and 2 responses
    n_global = ctx.reduce_sum(torch.tensor(float(sl.stop - sl.start)))
    (_seq_loss(model, ids[sl], w[sl]) * ctx.world / n_global).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    opt.step()
    full = full_state_dict(model, ctx)
    save_sharded(ckpt_dir, model, opt, ctx)
    model2 = shard_model(tiny_qwen2(seed=7))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    load_sharded(ckpt_dir, model2, opt2, ctx)
    full2 = full_state_dict(model2, ctx)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    opt_err = max(
        float((s1[k]["exp_avg_sq"].full_tensor() - s2[k]["exp_avg_sq"].full_tensor()).abs().max()) for k in s1
    )
    if not ctx.is_main:
        return {}
    reload_err = max(float((full[k] - full2[k]).abs().max()) for k in full)
    return {"norm": norm, "weights": full, "reload_err": reload_err, "opt_err": opt_err, "world": ctx.world}


def failing_rank() -> None:
    from asympo.distributed import init_from_env

    ctx = init_from_env("cpu")
    if ctx.rank == 1:
        os._exit(3)
    ctx.barrier()


def uneven_batch():
    """3 groups of 3 responses of different lengths and rewards: 9 responses, 5 and 4 on two ranks."""
    from asympo.runtime.records import Batch, RolloutGroup, Sample

    groups = []
    for g in range(3):
        prompt = [2, 3 + g]
        samples = [
            Sample(prompt, [*[5 + i, 6, 7][: 1 + (i + g) % 3], 1], "", float(i == g), "stop", 0, None)
            for i in range(3)
        ]
        groups.append(RolloutGroup(g, f"p{g}", "", 0, 0, samples))
    return Batch(groups, 0)


def learner_steps(cfgs: list[dict], dist: bool = True) -> list[dict]:
    """For each config: one `Learner.step` on `uneven_batch` from the same initial model (sharded over the
    launcher's ranks when `dist`); rank 0 returns the logged metrics and the full weights after the step."""
    from asympo.distributed import SINGLE, full_state_dict, init_from_env
    from asympo.learner import Learner, LearnerConfig

    torch.set_num_threads(1)
    ctx = init_from_env("cpu") if dist else SINGLE
    out = []
    for cfg in cfgs:
        learner = Learner(tiny_qwen2(seed=0), LearnerConfig(**cfg), pad_id=0, dist=ctx)
        metrics = learner.step(uneven_batch())
        weights = full_state_dict(learner.model, ctx)
        if ctx.is_main:
            out.append({"metrics": metrics, "weights": {k: v.clone() for k, v in weights.items()}})
    return out
