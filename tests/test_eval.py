"""eval.py: one checkpoint evaluated under every population-statistics choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from normlab.job.evaluation import EvalChoices, evaluate_checkpoint
from normlab.run_folder import EVAL_FILE
from normlab.train import run
from tests.helpers import Shrink, compose_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, shrink: Shrink) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    results = run(
        compose_config(
            shrink(
                "data.train_samples=256",
                "data.val_samples=128",
                "batch_size=16",
                "logger=none",
                "norm=batch_group",
                "norm.groups=4",
                "eval_batch_size=64",
            )
        ),
        folder,
    )
    torch.set_num_threads(threads)
    return folder, results


def test_every_choice_is_a_row_and_the_ema_row_is_the_runs_own_accuracy(
    trained: tuple[Path, dict],
) -> None:
    folder, results = trained
    choices = EvalChoices(precise_bn_samples=[64, 256], batch_sizes=[4, 64], alphas=[0.5],
                          corruption="gaussian_noise", shift_samples=128)  # fmt: skip
    rows = evaluate_checkpoint(folder / "checkpoints" / "last.ckpt", choices)
    kinds = [
        (
            r["statistics"],
            r.get("samples"),
            r.get("eval_batch_size"),
            r.get("eval_alpha"),
            r.get("domain"),
        )
        for r in rows
    ]
    assert kinds == [
        ("ema", None, None, None, None),
        ("precise_bn", 64, None, None, None),
        ("precise_bn", 256, None, None, None),
        ("batch", None, 4, None, None),
        ("batch", None, 64, None, None),
        ("ema", None, None, 0.5, None),
        ("ema", None, None, None, "gaussian_noise"),
        ("re-estimated", 128, None, None, "gaussian_noise"),
    ]
    assert rows[0]["val_acc"] == pytest.approx(
        results["val_acc"], abs=1e-6
    )  # same weights, same buffers
    assert rows[0]["norm"] == "batch_group" and rows[0]["seed"] == 0
    assert json.loads((folder / "eval" / EVAL_FILE).read_text()) == json.loads(json.dumps(rows))


def test_eval_entry_prints_the_table_and_refuses_bad_input(
    trained: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    folder, _ = trained
    ckpt = folder / "checkpoints" / "last.ckpt"
    args = [f"ckpt_path={ckpt}", "precise_bn_samples=[64]", "alphas=[]"]
    ok = subprocess.run([sys.executable, str(REPO_ROOT / "eval.py"), *args], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "precise_bn" in ok.stdout and "val acc %" in ok.stdout
    assert ok.stdout.splitlines()[0].startswith("statistics"), "the table and nothing else"
    assert "available" not in ok.stdout + ok.stderr, "no Lightning advertisement lines"
    entry = runpy.run_path(str(REPO_ROOT / "eval.py"))["main"]
    stray = tmp_path / "model.ckpt"
    stray.write_text("hello")
    moved = tmp_path / "copied.ckpt"  # a readable checkpoint outside its run folder
    moved.write_bytes(ckpt.read_bytes())
    for argv, code, words in [
        (
            [f"ckpt_path={stray}"],
            1,
            ["not a readable normlab checkpoint", "not a complete torch checkpoint"],
        ),
        ([f"ckpt_path={moved}"], 1, ["config_resolved.yaml not found"]),
        (["ckpt_path=x", "alhpas=[1]"], 2, ["alhpas", "alphas"]),
        (["alphas=[1]"], 2, ["ckpt_path=", "is required"]),
        ([f"ckpt_path={ckpt}", "data.nme=x"], 1, ["data.nme is no key", "data.name"]),
    ]:
        with pytest.raises(SystemExit) as exited:
            entry(argv)
        err = capsys.readouterr().err
        assert exited.value.code == code and err.count("\n") == 1, err
        assert all(w in err for w in words), err


def test_the_runs_own_config_can_be_overridden_and_a_wrong_key_is_named(
    trained: tuple[Path, dict],
) -> None:
    """eval.py used to accept no key of the run's config ("Key 'data' not in 'EvalChoices'"),
    so a run folder could not be evaluated elsewhere (another data.root) or on a subset."""
    folder, _ = trained
    ckpt = folder / "checkpoints" / "last.ckpt"
    choices = EvalChoices(precise_bn_samples=[], batch_sizes=[], alphas=[])
    rows = evaluate_checkpoint(ckpt, choices, tmp_out := folder / "eval_subset",
                               {"data.val_samples": 64, "trainer": "cpu"})  # fmt: skip
    assert rows[0]["overrides"] == {"data.val_samples": 64, "trainer": "cpu"}
    assert (rows[0]["val_acc"] * 64) == pytest.approx(round(rows[0]["val_acc"] * 64))
    assert (tmp_out / EVAL_FILE).is_file()
    with pytest.raises(
        ValueError, match=r"data\.val_sample is no key .*did you mean data\.val_samples"
    ):
        evaluate_checkpoint(ckpt, choices, None, {"data.val_sample": 64})
    with pytest.raises(ValueError, match="trainer=tpu: valid choices: cpu, gpu"):
        evaluate_checkpoint(ckpt, choices, None, {"trainer": "tpu"})


def test_a_whole_sweep_is_one_table_with_a_row_per_run_and_choice(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    import shutil

    from normlab.job.evaluation import evaluate_sweep, format_rows, varied_run_axes

    folder, _ = trained
    sweep = tmp_path / "sweep"
    for job, seed in ((0, 1), (1, 0)):
        shutil.copytree(folder, sweep / str(job))
        record = json.loads((sweep / str(job) / "results.json").read_text())
        (sweep / str(job) / "results.json").write_text(json.dumps({**record, "seed": seed}))
    choices = EvalChoices(precise_bn_samples=[64], batch_sizes=[], alphas=[])
    rows = evaluate_sweep(sweep, choices)
    assert [(r["run"], r["seed"], r["statistics"]) for r in rows] == [
        ("1", 0, "ema"), ("1", 0, "precise_bn"), ("1", 0, "batch"),
        ("0", 1, "ema"), ("0", 1, "precise_bn"), ("0", 1, "batch"),
    ]  # fmt: skip
    assert varied_run_axes(rows) == ["seed"]
    table = format_rows(rows, ["seed"]).splitlines()
    assert table[0].split()[:3] == ["run", "seed", "statistics"] and len(table) == 7


def test_evaluation_builds_only_the_experiment(
    trained: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Trainer, logger or callback is built to evaluate a checkpoint: the experiment alone
    (data, model, module) is what eval.py and choose_alpha need."""
    import lightning

    import normlab.job.build

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluation built a part of the harness")

    monkeypatch.setattr(lightning.Trainer, "__init__", refuse)
    monkeypatch.setattr(normlab.job.build, "build_harness", refuse)
    monkeypatch.setattr(normlab.job.build, "build_loggers", refuse)
    folder, results = trained
    rows = evaluate_checkpoint(
        folder / "checkpoints" / "last.ckpt", EvalChoices(precise_bn_samples=[], alphas=[])
    )
    assert rows[0]["statistics"] == "ema"
    assert rows[0]["val_acc"] == pytest.approx(results["val_acc"], abs=1e-6)
