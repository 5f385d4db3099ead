"""Bad input ends with one 'normlab: error: ...' line and a non-zero exit, before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import Shrink, compose_config, run_train, shrunk

# refused before training: only the epoch and training-set sizes of the tiny run
FAST = shrunk("logger=none", without=["data.val_samples", "trainer.num_sanity_val_steps",
                                      "callbacks.progress", "print_config"])  # fmt: skip


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("normlab: error:")]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["norm=nosuchnorm"], "unknown norm 'nosuchnorm'; valid choices:"),
        (["nosuchkey=1"], "unknown config key 'nosuchkey' (to add a new key write +nosuchkey=...)"),
        (
            ["nrom=gn"],
            "unknown config key 'nrom' (to add a new key write +nrom=...); did you mean 'norm'?",
        ),
        (
            ["optim.lrr=0.1"],
            "unknown config key 'optim.lrr' (to add a new key write +optim.lrr=...); did you mean 'optim.lr'?",
        ),
        (["batch_size=abc"], "batch_size must be an integer, got 'abc'"),
        (["optim.lr=fast"], "optim.lr must be a number, got 'fast'"),
        (["batch_size=[1"], "no viable alternative at input '[1'"),
    ],
)
def test_config_errors_are_one_line_before_hydra(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = run_train([*FAST, *args], tmp_path)
    assert result.returncode == 2
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"normlab: error: {expected}"), result.stderr
    assert "HYDRA_FULL_ERROR" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before Hydra made a run folder


def test_sweep_value_of_wrong_type_is_refused_before_any_job(tmp_path: Path) -> None:
    result = run_train([*FAST, "batch_size=8,x", "-m"], tmp_path)
    assert result.returncode == 2
    assert _error_lines(result.stderr) == ["normlab: error: batch_size must be an integer, got 'x'"]


def test_a_run_error_is_one_line_and_exit_1_before_training(tmp_path: Path) -> None:
    """What every error of normlab.train.run (the cases below) looks like on the command line."""
    result = run_train([*FAST, "norm=bn", "batch_size=1"], tmp_path)
    assert result.returncode == 1
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and "cannot train with a per-device batch of 1" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # no training step ran


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["norm=bn", "batch_size=1"], "cannot train with a per-device batch of 1"),
        (
            ["data=folder", "data.root=/nonexistent/normlab"],
            "data.root=/nonexistent/normlab does not exist",
        ),
        (["trainer.devices=64"], "trainer.devices=64 CPU processes but this machine has only"),
        (["trainer=gpu"], "no GPU is visible"),
        (["data.train_samples=5000"], "data.train_samples=5000 exceeds the 1437 samples of"),
        (["precise_bn.num_samples=100"], "precise_bn.num_samples=100 exceeds the 64 training"),
    ],
)
def test_run_errors_are_user_errors_before_training(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    """Raised as a user error (printed as one line, no traceback) before any training step."""
    if "trainer=gpu" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is visible")
    from normlab.results import USER_ERRORS
    from normlab.train import run

    with pytest.raises(USER_ERRORS) as error:
        run(compose_config([*FAST, *args]), tmp_path / "run")
    assert expected in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # no training step ran


@pytest.mark.parametrize("epochs", [0, -3])
def test_an_epoch_count_that_trains_nothing_is_refused_before_training(
    tmp_path: Path, epochs: int, shrink: Shrink
) -> None:
    from tests.helpers import run_in_process

    overrides = shrink("data.train_samples=32", "data.val_samples=16", "threads=1",
                       f"trainer.max_epochs={epochs}", without=["trainer.num_sanity_val_steps"])  # fmt: skip
    with pytest.raises(ValueError, match="trainer.max_epochs must be a positive integer"):
        run_in_process(overrides, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and results["bad_input"] is True
    assert "trainer.max_epochs must be a positive integer (or -1" in results["error"]
    assert results.get("epochs", 0) == 0


def test_eval_names_a_file_that_is_no_checkpoint(tmp_path: Path) -> None:
    from normlab.job.evaluation import load_weights

    for name, content in (("text.ckpt", b"not a checkpoint"), ("empty.ckpt", b"")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"ckpt_path={path} is not a readable normlab"):
            load_weights(path)
    import torch

    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="is not a normlab checkpoint \\(no state_dict\\)"):
        load_weights(tmp_path / "other.ckpt")
