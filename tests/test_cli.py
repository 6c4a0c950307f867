"""The CLI's bad-input errors: one line `asympo: error: ...`, exit status 2, no traceback, before any work;
`--resume` with a changed config; unwritable or full output directories."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest

from asympo.cli import main
from asympo.config import TrainConfig, apply_overrides
from asympo.presets import preset_dict


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_a_wrong_type_is_one_line_and_exit_2_in_a_real_process(tmp_path):
    """The issue's example, as a user runs it: the field and the expected type, no traceback."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "asympo.cli",
            "train",
            "--preset",
            "demo",
            "--out",
            str(tmp_path / "o"),
            "--set",
            "learner.lr=fast",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr == "asympo: error: learner.lr must be a number (float), got 'fast'\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "sets,message",
    [
        (["learner.lr=fast"], "learner.lr must be a number (float), got 'fast'"),
        (["steps=many"], "steps must be an integer (int), got 'many'"),
        (["report=maybe"], "report must be true or false (bool), got 'maybe'"),
        (["learner.lrr=1e-3"], "unknown config key(s) learner.lrr (did you mean learner.lr?)"),
        (["rollout.top_p=2"], "rollout.top_p must be in (0, 1]"),
        (['logging.backends=["jsonl", "mlflow"]'], "unknown backend(s) 'mlflow'"),
    ],
)
def test_bad_config_values_are_user_errors(capsys, tmp_path, sets, message):
    args = ["train", "--preset", "demo", "--out", str(tmp_path / "o"), "--no-progress"]
    code, err = run_cli(capsys, *args, *[x for s in sets for x in ("--set", s)])
    assert code == 2
    assert err.startswith("asympo: error: ") and message in err and err.count("\n") == 1


def test_a_bad_config_file_names_the_field(capsys, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"learner": {"lr": "fast"}, "out": str(tmp_path / "o")}))
    code, err = run_cli(capsys, "train", "--config", str(path))
    assert code == 2 and "learner.lr must be a number (float), got 'fast'" in err


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"prompt": "1+1", "reference": "2"}\n{"prompt": "2+2", "reference": \n', "line 2: invalid JSON"),
        ('{"prompt": "1+1", "reference": "2"}\n[1, 2]\n', "line 2: expected a JSON object, got list"),
        ('{"prompt": "1+1", "reference": "2"}\n\n{"prompt": "3+3"}\n', "line 3: missing field 'reference'"),
        ('{"prompt": "1+1", "reference": ["2"]}\n', "line 1: field 'reference' (the reference) must be text"),
    ],
)
def test_malformed_data_lines_fail_before_any_work(capsys, tmp_path, content, message):
    """Every line of a task file is checked in `validate`, before the model is loaded or warmed up."""
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    out = tmp_path / "o"
    code, err = run_cli(
        capsys, "train", "--preset", "demo", "--out", str(out), "--set", f"task.name={data}", "--no-progress"
    )
    assert code == 2, err
    assert f"{data}, {message}" in err
    assert not (out / "config.json").exists()


def _run_dir(tmp_path, **changes) -> str:
    """A run directory as `asympo train` leaves it (config.json), without training."""
    out = tmp_path / "run"
    out.mkdir()
    sets = [f"out={json.dumps(str(out))}", "steps=10"] + [f"{k}={v}" for k, v in changes.items()]
    cfg = TrainConfig.from_dict(apply_overrides(preset_dict("demo"), sets))
    (out / "config.json").write_text(cfg.to_json())
    return str(out)


def test_resume_with_a_changed_config_lists_the_differing_fields(capsys, tmp_path):
    out = _run_dir(tmp_path)
    code, err = run_cli(
        capsys, "train", "--resume", "--out", out, "--set", "learner.lr=0.5", "--objective", "spo"
    )
    assert code == 2
    assert "--resume: the config differs from the run's" in err
    assert "learner.lr: 0.0002 -> 0.5" in err and "learner.objective: 'asympo' -> 'spo'" in err
    assert "steps" in err.split("may change only", 1)[1]  # says what may change
    # A whole different preset is caught the same way.
    code, err = run_cli(capsys, "train", "--resume", "--out", out, "--preset", "gsm8k")
    assert code == 2 and "model.path: 'embedded' -> 'Qwen/Qwen3-0.6B'" in err


def test_resume_allows_safe_changes(capsys, tmp_path, monkeypatch):
    import asympo.train

    seen = {}

    def fake_train(cfg, resume, progress):
        seen["cfg"], seen["resume"] = cfg, resume
        raise ValueError("stop here")  # the config stage is what this test is about

    monkeypatch.setattr(asympo.train, "train", fake_train)
    out = _run_dir(tmp_path)
    sets = ["eval.every=5", "checkpoint_every=3", "keep_checkpoints=4", "report=false"]
    code, err = run_cli(
        capsys,
        "train",
        "--resume",
        "--out",
        out,
        "--steps",
        "20",
        *[x for s in sets for x in ("--set", s)],
    )
    assert code == 2 and "stop here" in err, err
    cfg = seen["cfg"]
    assert seen["resume"] and cfg.steps == 20 and cfg.eval.every == 5 and cfg.checkpoint_every == 3
    assert cfg.keep_checkpoints == 4 and cfg.report is False and cfg.learner.lr == 2e-4
    # The preset the run was started with is accepted too (nothing but safe fields differ).
    code, err = run_cli(capsys, "train", "--resume", "--out", out, "--preset", "demo", "--steps", "10")
    assert code == 2 and "stop here" in err, err


def test_an_unwritable_out_names_the_path(capsys, tmp_path):
    """A file in the way of --out (tests run as root, so chmod cannot make a directory unwritable)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = blocker / "run"
    code, err = run_cli(capsys, "train", "--preset", "demo", "--out", str(out), "--no-progress")
    assert code == 1
    assert err.startswith(f"asympo: error: cannot write {out}: Not a directory") and err.count("\n") == 1


def test_a_full_disk_names_the_path(capsys, tmp_path, monkeypatch):
    import os

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "o" / ".write-test"))

    monkeypatch.setattr(os, "fsync", no_space)
    code, err = run_cli(capsys, "train", "--preset", "demo", "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 1
    assert "cannot write" in err and "No space left on device" in err and "Traceback" not in err


def test_a_run_stopped_by_the_nan_guard_names_the_step_and_the_last_good_checkpoint(
    capsys, tmp_path, tiny_model_dir, monkeypatch
):
    """Losses that turn NaN after the first checkpoint, until `learner.max_skipped_steps` in a row: one line,
    exit 2, no traceback, naming the step and the newest checkpoint the run wrote."""
    import asympo.train
    from tests import nan_objective

    save = asympo.train.save_checkpoint

    def save_then_poison(*args, **kwargs):
        save(*args, **kwargs)
        nan_objective.POISONED["on"] = True

    monkeypatch.setattr(asympo.train, "save_checkpoint", save_then_poison)
    monkeypatch.setitem(nan_objective.POISONED, "on", False)
    out = tmp_path / "o"
    sets = {
        "mode": "sync",
        "model.path": json.dumps(str(tiny_model_dir)),
        "rollout.prompts_per_step": 2,
        "rollout.group_size": 2,
        "rollout.max_new_tokens": 3,
        "checkpoint_every": 1,
        "learner.max_skipped_steps": 2,
        "report": "false",
    }
    args = ["train", "--preset", "demo", "--out", str(out), "--no-progress", "--steps", "8"]
    args += ["--objective", "tests.nan_objective:nan_when_poisoned"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    code, err = run_cli(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err
    # Step 0 trains and is checkpointed, steps 1 and 2 are skipped (the run checkpoints after step 1 too:
    # a skipped step leaves the weights as they were), step 2 is the second in a row.
    line = err.splitlines()[-1]  # earlier lines are transformers' loading bars
    assert line.startswith("asympo: error: step 2: "), err
    assert "2 steps in a row had a non-finite loss" in line and "learner.max_skipped_steps=2" in line
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000001", "step_00000002"], ckpts
    assert line.endswith(f"the last good checkpoint is {out / 'checkpoints' / 'step_00000002'}"), line


@pytest.mark.parametrize("command", ["demo", "train", "eval", "study", "report", "objectives", "serve"])
def test_every_subcommand_has_a_help(capsys, command):
    from asympo.cli import build_parser

    assert command in build_parser()._subparsers._group_actions[0].choices  # a new command gets a row here
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: asympo {command}")


def test_every_option_of_every_subcommand_says_what_it_does():
    import argparse

    from asympo.cli import build_parser

    (subcommands,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    silent = [
        f"asympo {name} {'/'.join(action.option_strings) or action.dest}"
        for name, parser in subcommands.choices.items()
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert silent == []


def test_help_config_lists_every_field_aligned(capsys):
    from asympo.config import describe

    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == [key for key, _, _ in describe()]
    assert "rollout.reward_batch_timeout_s" in [line.split()[0] for line in out]
    # The default column starts at the same place on every line, the longest key's too.
    starts = {len(line) - len(line[len(line.split()[0]) :].lstrip()) for line in out}
    assert len(starts) == 1, starts


def test_objectives_lists_only_user_hyperparameters(capsys):
    assert main(["objectives"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(rows) == {"naive", "spo", "asympo", "grpo", "gspo", "cispo"}
    assert rows["asympo"].endswith("hparams: eps=1e-06, rescale='none'")  # no internal batch statistic
    assert "batch_nll" not in "".join(rows.values()) and "ctx" not in "".join(rows.values())


def test_serve_without_fastapi_names_the_extra(capsys, monkeypatch):
    """`--help` works without the extra; running it is one line naming the extra, before any model load."""
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now raises ImportError
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "ASYMPO_SERVE_API_KEY" in capsys.readouterr().out
    code, err = run_cli(capsys, "serve", "--model", "/nonexistent/model")
    assert code == 2
    assert err.startswith("asympo: error: asympo serve needs FastAPI and uvicorn") and err.count("\n") == 1
    assert "pip install 'asympo[serve]'" in err


def test_rollout_serve_without_fastapi_names_the_extra_before_starting_a_server(monkeypatch, tmp_path):
    from asympo.serve import ServerProcess

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    server = ServerProcess("/nonexistent/model", log_path=tmp_path / "serve.log")
    with pytest.raises(ImportError, match=r"pip install 'asympo\[serve\]'"):
        server.start()
    assert server.proc is None and not (tmp_path / "serve.log").exists()
