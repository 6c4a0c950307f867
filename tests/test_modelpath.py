"""One rule for a model argument, shared by `model.path`, `asympo eval --model` and TorchEngine."""

from __future__ import annotations

import pytest

import asympo.cli
import asympo.engines.torch
import asympo.train
from asympo.modelpath import check_model_path


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
