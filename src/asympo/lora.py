"""LoRA through `peft` (optional extra: `pip install 'asympo[lora]'`).

With `model.lora = {"r": 16, "alpha": 32}` the learner trains only a low-rank adapter:

- `wrap_lora(model, settings)` freezes the base model and injects the adapter (or reloads a saved one
  for resume), so the learner's optimiser, which takes the parameters with `requires_grad`, holds only
  adapter tensors;
- checkpoints hold only the adapter (`adapter_model.safetensors` + `adapter_config.json`; the base model
  is the run's `model.path`, named in `adapter_config.json`);
- rollout engines keep serving the base architecture: `merged_state_dict(model)` is the full state dict
  `W + (alpha / r) * B @ A` under the base model's key names, computed without touching the learner's
  model, and `adapter_files(model)` gives the adapter itself to servers that load adapters;
- `load_merged(adapter_dir)` rebuilds a plain model from a LoRA checkpoint, which is how `asympo eval`
  (and `TorchEngine.from_pretrained`) evaluate one.

See docs/models.md for which rank and target modules to use with 0.5B-8B models.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "LoraSettings",
    "adapter_files",
    "is_adapter_dir",
    "is_lora",
    "load_merged",
    "merged_state_dict",
    "policy_copy",
    "policy_state_dict",
    "require_peft",
    "wrap_lora",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# The projections of every attention and MLP block of Llama/Qwen-style models (what QLoRA and most
# RL recipes adapt); embeddings and the LM head stay frozen.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """The adapter: `model.lora` in the run config (an empty dict means full fine-tuning)."""

    r: int = 16
    """Rank of the update B @ A."""
    alpha: float = 32.0
    """Scale numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training (0 keeps the learner's log-probs deterministic)."""
    target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Module names (suffixes) that get an adapter, or "all-linear" (every linear layer but the LM head)."""

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"model.lora.r must be an int >= 1, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not self.alpha > 0:
            raise ValueError(f"model.lora.alpha must be a number > 0, got {self.alpha!r}")
        if not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout!r}")
        t = self.target_modules
        if isinstance(t, str):
            if t != "all-linear":
                raise ValueError(
                    f'model.lora.target_modules must be a list of module names or "all-linear", got {t!r}'
                )
        elif isinstance(t, list | tuple) and t and all(isinstance(x, str) and x for x in t):
            self.target_modules = list(t)
        else:
            raise ValueError(f"model.lora.target_modules must be a non-empty list of module names, got {t!r}")

    @classmethod
    def from_dict(cls, d: dict) -> LoraSettings:
        """Settings from the config's `model.lora` dict; unknown keys are an error naming the valid ones."""
        if not isinstance(d, dict):
            raise ValueError(f"model.lora must be a mapping like {{'r': 16, 'alpha': 32}}, got {d!r}")
        valid = ("r", "alpha", "dropout", "target_modules")
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"model.lora: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**d)

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )


def require_peft() -> None:
    """Raise ImportError with the install command when peft is missing."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise ImportError("model.lora needs peft, which is not installed: pip install 'asympo[lora]'")


def is_lora(model: torch.nn.Module) -> bool:
    """Whether `model` is a peft-wrapped model."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """A directory holding a saved adapter and no full model (a LoRA checkpoint)."""
    p = Path(path).expanduser()
    return (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def wrap_lora(
    model: torch.nn.Module, settings: LoraSettings, adapter_dir: str | os.PathLike | None = None
) -> torch.nn.Module:
    """Freeze `model` and add a trainable adapter: a new one from `settings`, or the one saved in
    `adapter_dir` (resume), which must have been made with the same settings."""
    require_peft()
    from peft import PeftModel, get_peft_model

    if adapter_dir is None:
        wrapped = get_peft_model(model, settings.peft_config())
    else:
        saved = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())
        if saved.get("r") != settings.r or float(saved.get("lora_alpha")) != float(settings.alpha):
            raise ValueError(
                f"the adapter in {adapter_dir} has r={saved.get('r')}, alpha={saved.get('lora_alpha')} but "
                f"model.lora asks for r={settings.r}, alpha={settings.alpha}; resume with the run's own config"
            )
        wrapped = PeftModel.from_pretrained(model, os.fspath(adapter_dir), is_trainable=True)
    if hasattr(wrapped, "enable_input_require_grads"):
        # With the embeddings frozen, reentrant gradient checkpointing sees no input that needs a gradient
        # and silently gives the adapter none. HF's gradient_checkpointing_enable does this too, but only
        # when it is the one enabling checkpointing; doing it here covers every other way.
        wrapped.enable_input_require_grads()
    return wrapped


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full weights `W + (alpha / r) * B @ A` under the base model's key names.  # name -> tensor

    The learner's model is not modified (unlike peft's `merge_and_unload`); the result has fresh tensors
    for adapted layers and the model's own (detached) tensors elsewhere, in the base weights' dtype.
    """
    if not is_lora(model):
        raise TypeError("merged_state_dict needs a peft-wrapped model (see wrap_lora)")
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapter = model.active_adapter
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            deltas[f"{name}.base_layer.weight"] = module.get_delta_weight(adapter)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue  # lora_A / lora_B / lora_dropout live only in the adapter
        if key in deltas:
            tensor = (tensor.float() + deltas[key].float()).to(tensor.dtype)
        out[key.replace(".base_layer.", ".")] = tensor.detach()
    return out


def policy_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What rollout engines load: the merged weights of a LoRA model, else the model's own state dict."""
    return merged_state_dict(model) if is_lora(model) else model.state_dict()


def policy_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An independent plain copy of the policy for sampling: a LoRA model's base with the adapter merged
    in (same key names as `policy_state_dict`), else a deep copy. The learner's model is not modified."""
    import copy

    clone = copy.deepcopy(model)
    return clone.merge_and_unload() if is_lora(clone) else clone


def adapter_files(model: torch.nn.Module) -> dict[str, bytes]:
    """The adapter as files ({"adapter_model.safetensors": ..., "adapter_config.json": ...}), for servers
    that load LoRA adapters (vLLM/SGLang `load_lora_adapter`) instead of full weights."""
    if not is_lora(model):
        raise TypeError("adapter_files needs a peft-wrapped model (see wrap_lora)")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return {name: (Path(tmp) / name).read_bytes() for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG)}


def load_merged(
    adapter_dir: str | os.PathLike,
    *,
    base_path: str | os.PathLike | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> torch.nn.Module:
    """A plain `AutoModelForCausalLM` with the adapter in `adapter_dir` merged in (eval mode).

    The base model is `base_path`, else the one named in the adapter's `adapter_config.json`.
    """
    require_peft()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = Path(adapter_dir).expanduser()
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no {ADAPTER_CONFIG} (not a LoRA adapter directory)")
    if base_path is None:
        base_path = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        if not base_path:
            raise ValueError(f"{adapter_dir / ADAPTER_CONFIG} names no base model; pass base_path=")
    base_path = os.fspath(base_path)
    if not Path(base_path).expanduser().exists() and (base_path.startswith(("/", ".", "~"))):
        raise FileNotFoundError(
            f"the base model of the adapter in {adapter_dir} ({base_path}) does not exist any more; "
            "pass base_path= (or restore the run's model.path)"
        )
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, trust_remote_code=False)
    merged = PeftModel.from_pretrained(base, os.fspath(adapter_dir)).merge_and_unload()
    return merged.eval()
