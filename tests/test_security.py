"""Secrets from the environment never reach the run folder; checkpoints load weights only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from tests.helpers import Shrink, run_train

SECRETS = {"WANDB_API_KEY": "secret-xyz-123", "NORMLAB_TEST_TOKEN": "tok-abc-98765"}


def test_secrets_never_written_to_the_run_folder(tmp_path: Path, shrink: Shrink) -> None:
    env = {**SECRETS, "WANDB_MODE": "offline"}
    result = run_train(shrink("logger=wandb"), tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "wandb").is_dir()
    for value in SECRETS.values():
        found = subprocess.run(
            ["grep", "-rla", value, str(tmp_path / "run")], capture_output=True, text=True
        )
        assert found.stdout == "", f"{value} leaked into {found.stdout}"


class _Payload:
    """Unpickling this runs `touch <path>`: what weights_only loading must refuse."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.path}",))


def test_resume_refuses_a_checkpoint_with_code(tmp_path: Path, shrink: Shrink) -> None:
    marker = tmp_path / "pwned"
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, checkpoints / "last.ckpt")
    result = run_train(shrink("logger=none"), tmp_path)  # auto-resume picks last.ckpt
    assert result.returncode == 1
    assert not marker.exists()
    assert "normlab: error:" in result.stderr and "weights" in result.stderr.lower()


def test_results_json_is_readable_by_collaborators(tmp_path: Path) -> None:
    """results.json is written 0644 like the other outputs (mkstemp alone makes it 0600)."""
    import stat

    from normlab.results import write_results

    path = write_results(tmp_path, {"status": "running"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
