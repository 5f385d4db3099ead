"""Jobs side by side: CPU time per training image of one 2-thread job against two 1-thread
jobs at once (`hydra/launcher=cores`), at a small and a normal per-device batch.

A small per-device batch (2 x 8 virtual devices) is bound by per-operation overhead, which a
second thread does not share; two 1-thread jobs then train more images per second than one
2-thread job. Each configuration runs `python train.py` as a user would (a sweep of two seeds
through the cores launcher, or one job with threads=2) on the same data and steps; a job's
speed is its own train_images_per_s (validation and start-up excluded). CPU time per image is
the cores in use divided by the images per second of all jobs together; every row is also
given as a multiple of the per-device-32 cell run as two 1-thread jobs (the target of the
recipe issue: a per-device-2 cell at most 1.2x).

Usage: python scripts/bench_parallel_jobs.py [--data synthetic] [--steps 60] [--markdown F]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hardware import command_line, cpu_model
from normlab.results import RESULTS_FILE

REPO = Path(__file__).resolve().parents[1]
CASES = [  # (per-device batch, how it runs)
    (2, "one job, 2 threads"),
    (2, "two 1-thread jobs at once"),
    (32, "one job, 2 threads"),
    (32, "two 1-thread jobs at once"),
]


def job_overrides(args: argparse.Namespace, batch: int) -> list[str]:
    """The train.py overrides of one job: `steps` steps of batch x 8 virtual devices."""
    step = batch * 8
    return [
        f"data={args.data}",
        f"data.train_samples={args.steps * step}",
        *([f"data.num_samples={args.steps * step}"] if args.data == "synthetic" else []),
        f"data.val_samples={min(256, max(1, args.steps * step // 8))}",
        "virtual_devices=8",
        f"batch_size={batch}",
        "model=resnet20",
        f"norm={args.norm}",
        "trainer.max_epochs=1",
        "callbacks.progress=none",
        "callbacks.checkpoint.enabled=false",
        "logger=none",
        "print_config=false",
        *args.override,
    ]


def run_case(args: argparse.Namespace, batch: int, how: str, folder: Path) -> dict[str, Any]:
    """Run one case; the images per second of all its jobs together and the cores used."""
    base = [sys.executable, "train.py", *job_overrides(args, batch)]
    if how.startswith("two"):
        command = [*base[:2], "-m", *base[2:], "hydra/launcher=cores", "seed=0,1"]
        command.append(f"hydra.sweep.dir={folder}")
    else:
        command = [*base, "threads=2", f"hydra.run.dir={folder}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    speeds = [
        float(json.loads(p.read_text())["train_images_per_s"]) for p in folder.rglob(RESULTS_FILE)
    ]
    images_per_s = sum(speeds)
    return {"batch": batch, "how": how, "jobs": len(speeds), "images_per_s": images_per_s,
            "cpu_ms_per_image": 2 * 1000 / images_per_s}  # fmt: skip


def markdown(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    reference = next(r for r in rows if r["batch"] == 32 and r["how"].startswith("two"))
    lines = [
        "## Jobs side by side (hydra/launcher=cores)",
        "",
        f"Command: `{command_line()}`  ",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; CPU: {cpu_model()}, "
        f"{os.cpu_count()} cores  ",
        f"ResNet-20 + {args.norm}, data {args.data}, 8 virtual devices, {args.steps} steps per "
        "job, `python train.py` (two seeds through `hydra/launcher=cores`, or one job with "
        "threads=2); images per second of all jobs together (each job's train_images_per_s); "
        "CPU time per image = 2 cores / that.",
        "",
        "| per-device batch | how | jobs | img/s (all jobs) | CPU ms per image "
        "| vs 32 per device, two 1-thread jobs |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['batch']} | {row['how']} | {row['jobs']} | {row['images_per_s']:.0f} "
            f"| {row['cpu_ms_per_image']:.2f} "
            f"| {row['cpu_ms_per_image'] / reference['cpu_ms_per_image']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--norm", default="bn")
    parser.add_argument("--steps", type=int, default=60, help="training steps per job")
    parser.add_argument("--device", choices=["cpu"], default="cpu", help="CPU only")
    parser.add_argument("--override", nargs="*", default=[], help="more train.py overrides")
    parser.add_argument("--markdown", type=Path, default=None, help="write the section here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (batch, how) in enumerate(CASES):
            row = run_case(args, batch, how, Path(tmp) / str(index))
            print(
                f"batch {batch}, {how}: {row['images_per_s']:.0f} img/s, "
                f"{row['cpu_ms_per_image']:.2f} CPU ms per image",
                flush=True,
            )
            rows.append(row)
    text = markdown(args, rows)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
