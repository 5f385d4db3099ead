"""W&B: offline runs, one run id per run folder (resume continues it), failures only warn."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import Shrink, run_train


def test_offline_run_keeps_its_id_across_a_resume(tmp_path: Path, shrink: Shrink) -> None:
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": ""}
    # stopped after epoch 1 of 2 as a preempted job is (a changed max_epochs is another run)
    first = run_train(
        shrink("logger=wandb", "trainer.max_epochs=2", "debug.stop_after_epochs=1"),
        tmp_path,
        env=env,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = tmp_path / "run"
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert len(run_id) == 8
    assert (run_dir / "csv" / "metrics.csv").exists()  # csv stays on beside W&B
    assert "W&B disabled" not in first.stderr

    second = run_train(
        shrink("logger=wandb", "trainer.max_epochs=2"), tmp_path, env=env
    )  # auto-resume
    assert second.returncode == 0, second.stderr[-2000:]
    runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(run_id) for name in runs)  # same W&B run
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 2


def test_online_without_key_warns_once_and_trains(tmp_path: Path, shrink: Shrink) -> None:
    result = run_train(
        shrink("logger=wandb"), tmp_path, env={"WANDB_MODE": "online", "WANDB_API_KEY": ""}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("normlab: warning: W&B disabled") == 1
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "completed"


def test_tags_carry_every_swept_axis_and_the_group_names_the_preset() -> None:
    from normlab.platform.wandb_logging import run_tags, sweep_group
    from tests.helpers import compose_config

    cfg = compose_config(["experiment=rethinking_ema", "seed=2", "precise_bn.num_samples=2000"])
    tags = run_tags(cfg, ["norm.momentum=0.01", "+callbacks.extra.x._target_=" + "a" * 80])
    for tag in (
        "preset=rethinking_ema",
        "seed=2",
        "precise_bn.num_samples=2000",
        "norm.momentum=0.01",
    ):
        assert tag in tags
    assert all(len(t) <= 64 for t in tags) and len(tags) == len(set(tags))
    assert sweep_group(Path("unused"), "rethinking_ema") is None  # not inside a Hydra multirun
