"""Helpers shared by tests: repository paths, the overrides that shrink a run, running train.py
as a subprocess, the config it would run, composed in the test's own process, and a few plain
SGD steps on a model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

# The Hydra overrides that make a run tiny (one epoch of 64 digits, 64 to validate, no sanity
# pass, quiet): the `shrink` fixture of tests/conftest.py, and `shrunk(...)` where a module needs
# them at import time. A test's own sizes and settings are extras, which replace these by key.
# No `data=` and no `threads=`: a preset's data group and the thread count stay the test's own.
SHRINK: tuple[str, ...] = (
    "trainer.max_epochs=1",
    "data.train_samples=64",
    "data.val_samples=64",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress=none",
    "print_config=false",
)


Shrink = Callable[..., list[str]]  # the type of the `shrink` fixture: shrunk


def override_key(override: str) -> str:
    """The config key (or group) an override sets: `++trainer.max_steps=2` -> trainer.max_steps."""
    return override.split("=", 1)[0].lstrip("+~")


def shrunk(*extras: str, without: Iterable[str] = ()) -> list[str]:
    """SHRINK plus a test's extras: an extra replaces the SHRINK override of the same key (in
    its place; a later extra replaces an earlier one too) or is appended; `without` names keys
    of SHRINK to leave at the config's own value."""
    dropped = set(without)
    unknown = dropped - {override_key(o) for o in SHRINK}
    assert not unknown, f"not in SHRINK: {sorted(unknown)}"
    overrides = [o for o in SHRINK if override_key(o) not in dropped]
    for extra in extras:
        keys = [override_key(o) for o in overrides]
        if override_key(extra) in keys:
            overrides[keys.index(override_key(extra))] = extra
        else:
            overrides.append(extra)
    return overrides


def run_train(
    args: list[str], tmp_path: Path, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python train.py <args>` as a subprocess with outputs under tmp_path, quiet progress."""
    full_env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "33554432",
        "MALLOC_TRIM_THRESHOLD_": "68719476736",
    }
    full_env.update(env or {})
    base = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        f"hydra.run.dir={tmp_path}/run",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "callbacks.progress=none",
        "print_config=false",
    ]
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.run(
        base[:2] + flags + base[2:] + overrides,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def free_port() -> int:
    """A TCP port on localhost nobody listens on, for a gloo rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compose_config(overrides: list[str]) -> DictConfig:
    """The config `python train.py <overrides>` would run (without Hydra's own settings)."""
    from hydra import compose, initialize_config_dir

    from normlab.config.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def run_in_process(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """normlab.train.run on the config `python train.py <overrides>` would run, in this process
    (the command line's work without its process start); torch's thread count and
    OMP_NUM_THREADS are restored afterwards, since `threads=` sets them for the whole process."""
    import torch

    from normlab.train import run

    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        return dict(run(compose_config(overrides), output_dir))
    finally:  # `threads=` also sets OMP_NUM_THREADS, which later subprocesses would inherit
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


def sgd_steps(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    momentum: float = 0.0,
    clip_norm: float | None = None,
    cosine: bool = False,
) -> list[float]:
    """`steps` steps of torch.optim.SGD on the cross-entropy of model(x) against y, as a
    training loop outside normlab's LightningModule does them (the gradient norm clipped to
    `clip_norm`, a cosine schedule over the steps, notify_optimizer_step after each step for
    CBN's window); the loss of each step."""
    import torch
    import torch.nn.functional as F

    from normlab.norms import notify_optimizer_step

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if cosine else None
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        notify_optimizer_step(model)
        losses.append(loss.item())
    return losses
