"""One rule for a model argument, shared by `model.path`, `asympo eval --model` and TorchEngine."""

from __future__ import annotations

import pytest

import asympo.cli
import asympo.engines.torch
import asympo.train
from asympo.modelpath import check_hub_model, check_model_path, check_model_source


@pytest.mark.parametrize("hub_id", ["gpt2", "Qwen/Qwen3-0.6B", "meta-llama/Llama-3.2-1B", "org/name.v2"])
def test_hub_ids_pass_unchanged(hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so that no local directory of the same name exists
    assert check_model_path(hub_id) == hub_id


@pytest.mark.parametrize(
    "path", ["./model", "/no/such/model", "~/no-such-model-xyz", "a/b/c", "C:\\models\\x", "bad id"]
)
def test_missing_local_paths_are_errors_that_name_the_argument(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"--model .* does not exist \(and is not a hub id such as gpt2"
    ):
        check_model_path(path, "--model")


def test_a_local_directory_needs_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path .* has no config.json"):
        check_model_path(tmp_path, "model.path")
    (tmp_path / "config.json").write_text("{}")
    assert check_model_path(tmp_path) == str(tmp_path)


def test_train_eval_and_the_torch_engine_use_the_same_rule(capsys):
    assert asympo.train.check_model_path is check_model_path
    assert asympo.engines.torch.check_model_path is check_model_path
    assert asympo.cli.main(["eval", "--model", "a/b/c", "--dataset", "arith"]) == 2
    assert "--model 'a/b/c' does not exist (and is not a hub id" in capsys.readouterr().err


class _Socket:
    def close(self) -> None:
        pass


def _hub(monkeypatch, *, cached: bool, reachable: bool | None):
    """A Hugging Face cache that does or does not hold the model, and a hub host that answers, refuses, or
    must not be asked (None)."""
    import socket

    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(
        huggingface_hub,
        "try_to_load_from_cache",
        lambda repo, name: f"/cache/{repo}/{name}" if cached else None,
    )

    def connect(address, timeout):
        assert reachable is not None, "the network was asked although the cache had the model"
        if not reachable:
            raise OSError("[Errno -2] Name or service not known")
        return _Socket()

    monkeypatch.setattr(socket, "create_connection", connect)


def test_a_cached_hub_model_needs_no_network(monkeypatch):
    _hub(monkeypatch, cached=True, reachable=None)
    assert check_model_source("Qwen/Qwen3-0.6B", "model.path") == "Qwen/Qwen3-0.6B"


def test_an_uncached_hub_model_needs_the_hub_to_answer(monkeypatch):
    _hub(monkeypatch, cached=False, reachable=True)
    check_hub_model("gpt2", "model.path")  # transformers will download it
    _hub(monkeypatch, cached=False, reachable=False)
    with pytest.raises(
        FileNotFoundError,
        match=r"model.path 'gpt2' is not in the local Hugging Face cache and "
        r"huggingface.co cannot be reached \(.*Name or service not known\): download it once",
    ):
        check_hub_model("gpt2", "model.path")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"--model 'gpt2' is not in the local .* offline mode is on"):
        check_hub_model("gpt2", "--model")


def test_a_hub_model_out_of_reach_is_one_line_before_any_work(monkeypatch, tmp_path, capsys):
    _hub(monkeypatch, cached=False, reachable=False)
    out = tmp_path / "run"
    assert asympo.cli.main(["train", "--preset", "demo", "--model", "gpt2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("asympo: error: model.path 'gpt2' is not in the local Hugging Face cache")
        and not out.exists()
    )
    assert asympo.cli.main(["eval", "--model", "gpt2", "--dataset", "arith"]) == 2
    assert "--model 'gpt2' is not in the local Hugging Face cache" in capsys.readouterr().err
