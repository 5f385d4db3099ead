"""Helpers shared by tests: repository paths, running train.py as a subprocess, and the config
it would run, composed in the test's own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


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
