"""The verl policy losses `asympo` and `spo` against `asympo.objectives` (float64, tight tolerances).

Needs the `asympo[verl]` extra and asympo installed as a package (its `verl.plugins` entry point);
`make test-integrations` sets both up.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

pytest.importorskip("verl", reason="needs the asympo[verl] extra")

from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.workers.config import ActorConfig

from asympo.integrations.verl import ASymPOPolicyLossConfig
from asympo.objectives import policy_loss

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "verl"
TOL = dict(rtol=1e-12, atol=1e-12)
HPARAMS = {"asympo": {"eps": 1e-6, "rescale": "batch_mean"}, "spo": {"neg_scale": 0.3}}


def verl_agg_modes() -> list[str]:
    """The loss_agg_mode values verl 0.9 accepts, read from ActorConfig's own validation."""
    src = inspect.getsource(ActorConfig.__post_init__)
    listing = re.search(r"valid_loss_agg_modes\s*=\s*\[(.*?)\]", src, re.S)
    assert listing, "verl's ActorConfig no longer lists valid_loss_agg_modes; update this test"
    return re.findall(r"\"([\w-]+)\"", listing.group(1))


VERL_AGG_MODES = verl_agg_modes()


def make_batch(B=8, T=9, seed=0):
    """Random float64 batch in verl's layout: token-level advantages A_i broadcast over response tokens."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]  # [B, T] bool, as verl passes it
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv = adv - adv.mean()
    old = logp + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    return logp, mask, adv, old


def verl_call(name, logp, mask, adv, old, mode, config, rollout_is_weights=None):
    logp = logp.clone().requires_grad_(True)
    adv_tok = adv[:, None] * mask  # what verl's outcome estimators produce
    loss, metrics = get_policy_loss_fn(name)(
        old_log_prob=old,
        log_prob=logp,
        advantages=adv_tok,
        response_mask=mask,
        loss_agg_mode=mode,
        config=config,
        rollout_is_weights=rollout_is_weights,
    )
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad, metrics


def reference(name, logp, mask, adv, mode, *, loss_scale_factor=None, **hp):
    """verl's agg mode expressed through asympo.objectives' policy_loss."""
    logp = logp.clone().requires_grad_(True)
    m = mask.double()
    base = {"token-sum": "token-mean", "seq-mean-token-sum-norm": "seq-mean-token-sum"}.get(mode, mode)
    loss, metrics = policy_loss(name, logp, m, adv, agg=base, **hp)
    if mode == "token-sum":
        loss = loss * m.sum()
    elif mode == "seq-mean-token-sum-norm":
        loss = loss / (loss_scale_factor or logp.shape[1])
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad, metrics


def actor_config(name, hparams=None, **global_batch_info):
    """verl's ActorConfig with loss_mode=name; `hparams` default to HPARAMS[name]."""
    hparams = HPARAMS[name] if hparams is None else hparams
    cfg = ActorConfig(
        strategy="fsdp",
        rollout_n=4,
        ppo_micro_batch_size_per_gpu=2,
        policy_loss=ASymPOPolicyLossConfig(loss_mode=name, **hparams),
    )
    cfg.global_batch_info.update(global_batch_info)
    return cfg


def test_import_verl_registers_the_losses_through_the_entry_point():
    eps = [ep for ep in entry_points(group="verl.plugins") if ep.value == "asympo.integrations.verl"]
    assert eps, "asympo's verl.plugins entry point is missing: install the package (pip install -e '.[verl]')"
    code = (
        "import sys, verl\n"
        "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
        "assert 'asympo.integrations.verl' in sys.modules\n"
        "print(get_policy_loss_fn('asympo').__name__, get_policy_loss_fn('spo').__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["compute_policy_loss_asympo", "compute_policy_loss_spo"]


def test_every_verl_agg_mode_is_covered():
    assert set(VERL_AGG_MODES) == {
        "token-mean",
        "token-sum",
        "seq-mean-token-sum",
        "seq-mean-token-mean",
        "seq-mean-token-sum-norm",
    }


@pytest.mark.parametrize("mode", VERL_AGG_MODES)
@pytest.mark.parametrize("name", ["asympo", "spo"])
def test_loss_and_gradient_equal_the_objective(name, mode):
    logp, mask, adv, old = make_batch(seed=VERL_AGG_MODES.index(mode) + 10 * (name == "spo"))
    loss, grad, metrics = verl_call(name, logp, mask, adv, old, mode, actor_config(name))
    ref_loss, ref_grad, ref_metrics = reference(name, logp, mask, adv, mode, **HPARAMS[name])
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    for key in ("nll/pos", "nll/neg", "nll/ratio"):
        assert metrics[f"actor/{key}"] == pytest.approx(ref_metrics[key], rel=1e-12)
    assert metrics["actor/ppo_kl"] == pytest.approx(
        float(((old - logp) * mask).sum() / mask.sum()), rel=1e-12
    )


def test_seq_mean_token_sum_norm_uses_loss_scale_factor():
    logp, mask, adv, old = make_batch(seed=3)
    cfg = actor_config("spo", loss_scale_factor=4)
    loss, grad, _ = verl_call("spo", logp, mask, adv, old, "seq-mean-token-sum-norm", cfg)
    ref_loss, ref_grad, _ = reference(
        "spo", logp, mask, adv, "seq-mean-token-sum-norm", loss_scale_factor=4, **HPARAMS["spo"]
    )
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("name", ["asympo", "spo"])
def test_global_batch_info_makes_micro_batches_add_up_to_the_full_batch(name, mode):
    """2 data-parallel ranks x 2 micro-batches: mean over ranks of summed micro-batch losses == full batch."""
    logp, mask, adv, old = make_batch(B=8, seed=11)
    hp = {"eps": 1e-6} if name == "asympo" else HPARAMS[name]  # batch_mean rescale is per micro-batch
    cfg = actor_config(name, hp, dp_size=2, global_batch_size=8, batch_num_tokens=int(mask.sum()))
    leaf = logp.clone().requires_grad_(True)
    ranks = []
    for rank in range(2):
        micro = [slice(4 * rank, 4 * rank + 2), slice(4 * rank + 2, 4 * rank + 4)]
        total = sum(
            get_policy_loss_fn(name)(
                old[s], leaf[s], adv[s, None] * mask[s], mask[s], loss_agg_mode=mode, config=cfg
            )[0]
            for s in micro
        )
        ranks.append(total)
    loss = sum(ranks) / 2  # DDP/FSDP average the gradients over ranks
    (grad,) = torch.autograd.grad(loss, leaf)
    ref_loss, ref_grad, _ = reference(name, logp, mask, adv, mode, **hp)
    torch.testing.assert_close(loss.detach(), ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)


def test_asympo_forward_value_is_mean_advantage_under_seq_mean_token_mean():
    logp, mask, adv, old = make_batch(seed=5)
    cfg = actor_config("asympo", {})
    loss, _, _ = verl_call("asympo", logp, mask, adv, old, "seq-mean-token-mean", cfg)
    assert float(loss) == pytest.approx(float(adv.mean()), abs=1e-12)


def test_defaults_apply_with_verls_own_policy_loss_config():
    """loss_mode=asympo without the asympo config class: the objective's default hyperparameters."""
    from verl.workers.config import PolicyLossConfig

    logp, mask, adv, old = make_batch(seed=6)
    cfg = ActorConfig(
        strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=2, policy_loss=PolicyLossConfig("spo")
    )
    loss, grad, _ = verl_call("spo", logp, mask, adv, old, "seq-mean-token-mean", cfg)
    ref_loss, ref_grad, _ = reference("spo", logp, mask, adv, "seq-mean-token-mean")  # neg_scale=0.5
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)


def test_rollout_is_weights_multiply_the_token_losses():
    logp, mask, adv, old = make_batch(seed=7)
    w = torch.rand(logp.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    cfg = actor_config("spo")
    loss, _, _ = verl_call("spo", logp, mask, adv, old, "token-mean", cfg, rollout_is_weights=w)
    c = torch.where(adv >= 0, torch.ones_like(adv), torch.full_like(adv, HPARAMS["spo"]["neg_scale"]))
    expected = (-(c * adv)[:, None] * logp * w * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected, **TOL)


def test_token_varying_advantages_are_rejected():
    logp, mask, adv, old = make_batch(seed=8)
    adv_tok = adv[:, None] * mask
    adv_tok[0, 0] += 1.0
    with pytest.raises(ValueError, match="one advantage per response"):
        get_policy_loss_fn("asympo")(old, logp, adv_tok, mask, "seq-mean-token-mean", actor_config("asympo"))


@pytest.mark.parametrize(
    "kwargs, field",
    [({"neg_scale": -0.1}, "neg_scale"), ({"eps": 0.0}, "eps"), ({"rescale": "batch"}, "rescale")],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"ASymPOPolicyLossConfig\.{field}"):
        ASymPOPolicyLossConfig(loss_mode="asympo", **kwargs)


def compose_example(*overrides: str):
    """verl's fully-async trainer config with the example's `+asympo=fully_async` group, as on the CLI."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = Path(verl.__file__).parent / "experimental" / "fully_async_policy" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(
            config_name="fully_async_ppo_trainer",
            overrides=[
                f"hydra.searchpath=[pkg://verl.trainer.config,file://{EXAMPLES}]",
                "+asympo=fully_async",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                *overrides,
            ],
        )


def verl_ppo_loss(actor_cfg, logp, mask, adv, old):
    """Run verl's actor loss (`verl.workers.utils.losses.ppo_loss`) on a padded batch with a 3-token prompt."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss

    B, T = logp.shape
    P = 3
    lengths = mask.sum(-1)
    # Model output is one flat row of per-position log-probs over all unpadded sequences; position
    # P-1+t of sequence i predicts response token t.
    leaf = logp.clone().requires_grad_(True)
    zeros = leaf.new_zeros
    flat = torch.cat([torch.cat([zeros(P - 1), leaf[i, : lengths[i]], zeros(1)]) for i in range(B)])
    attention = torch.cat([torch.ones(B, P, dtype=torch.long), mask.long()], dim=1)
    data = TensorDict(
        {
            "prompts": torch.ones(B, P, dtype=torch.long),
            "responses": torch.ones(B, T, dtype=torch.long),
            "attention_mask": attention,
            "response_mask": mask.long(),
            "old_log_probs": old,
            "advantages": adv[:, None] * mask,
        },
        batch_size=[B],
    )
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=B)
    loss, metrics = ppo_loss(actor_cfg, {"log_probs": flat}, data)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, metrics


@pytest.mark.parametrize("name", ["asympo", "spo"])
def test_example_config_runs_through_verls_actor_loss(name):
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose_example(
        f"actor_rollout_ref.actor.policy_loss.loss_mode={name}",
        "actor_rollout_ref.actor.policy_loss.neg_scale=0.25",
    )
    assert cfg.algorithm.rollout_correction.bypass_mode is True  # old_log_probs := rollout log-probs
    assert cfg.actor_rollout_ref.rollout.calculate_log_probs is True
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert isinstance(actor.policy_loss, ASymPOPolicyLossConfig)
    assert actor.loss_agg_mode == "seq-mean-token-mean"
    assert actor.policy_loss.neg_scale == 0.25

    logp, mask, adv, old = make_batch(seed=21)
    loss, grad, metrics = verl_ppo_loss(actor, logp, mask, adv, old)
    hp = {"neg_scale": 0.25} if name == "spo" else {}
    ref_loss, ref_grad, _ = reference(name, logp, mask, adv, "seq-mean-token-mean", **hp)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert "actor/nll/ratio" in metrics  # only our losses report it: the worker ran loss_mode=asympo|spo


def test_example_launcher_passes_verls_config_validation(tmp_path):
    """run_asympo_fully_async.sh, with `python` stubbed to print its argv, composes and validates."""
    import json
    import os

    from verl.utils.config import omega_conf_to_dataclass, validate_config

    stub = tmp_path / "python"
    stub.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"\n'
    )
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "LOSS": "spo"}
    out = subprocess.run(
        ["bash", str(EXAMPLES / "run_asympo_fully_async.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    argv = json.loads(out.stdout)
    assert argv[:4] == [
        "-m",
        "verl.experimental.fully_async_policy.fully_async_main",
        "--config-dir",
        str(EXAMPLES),
    ]
    cfg = compose_example(*argv[5:])  # argv[4] is +asympo=fully_async, which compose_example adds
    assert argv[4] == "+asympo=fully_async"
    # What fully_async_main does before run_ppo, then verl's own checks.
    cfg.actor_rollout_ref.rollout.nnodes = cfg.rollout.nnodes
    cfg.actor_rollout_ref.rollout.n_gpus_per_node = cfg.rollout.n_gpus_per_node
    validate_config(cfg, use_reference_policy=False, use_critic=False)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.policy_loss.loss_mode == "spo" and isinstance(actor.policy_loss, ASymPOPolicyLossConfig)
