"""Hydra's tab completion through train.py, as its bash completion script asks for it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import REPO_ROOT


def _complete(line: str) -> list[str]:
    """What `eval "$(python train.py -sc install=bash)"` offers for `line` + TAB: the script runs
    `COMP_LINE=... COMP_POINT=... python train.py -sc query=bash` and offers its words."""
    env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))}
    proc = subprocess.run(
        [sys.executable, "train.py", "-sc", "query=bash"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr[-2000:]
    return proc.stdout.split()


def test_tab_completion_lists_group_options() -> None:
    assert _complete("python train.py norm=p") == ["norm=proxy_gn", "norm=proxy_ln"]
    completions = _complete("python train.py norm=gn model=res")
    assert {"model=resnet20", "model=resnet56", "model=resnet18"} <= set(completions)
    assert all(c.startswith("model=resnet") for c in completions)
