"""Virtual devices against literal small batches: training images/s of `python train.py` at
`batch_size=2 virtual_devices=64` (64 ranks of 2, one step over 128 samples) against literal
`batch_size=2` (one rank of 2), and plain `batch_size=128` for reference, each read from the
run's results.json (train_images_per_s: wall time between training steps, data loading
included, validation excluded). Runs are interleaved and repeated; medians are reported.
Usage: python scripts/bench_virtual.py [--norm bn] [--virtual 64] [--repeats 2] [--markdown F]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hardware import cpu_model
from normlab.results import RESULTS_FILE

REPO = Path(__file__).resolve().parents[1]


def train_images_per_s(overrides: list[str], workdir: Path) -> float:
    """Run train.py with `overrides` and return its measured training images/s."""
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    command = [
        sys.executable,
        str(REPO / "train.py"),
        f"hydra.run.dir={run_dir}",
        "callbacks.progress=none",
        "print_config=false",
        "callbacks.checkpoint.enabled=false",
        "logger=none",
        *overrides,
    ]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(overrides)} failed:\n{proc.stderr[-2000:]}")
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    return float(results["train_images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--norm", default="bn")
    parser.add_argument("--virtual", type=int, default=64)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    trainer = ["trainer=gpu"] if args.device == "cuda" else []
    common = [f"norm={args.norm}", f"data={args.data}", *trainer]
    step = 2 * args.virtual
    configs = {
        "literal batch_size=2": [*common, "batch_size=2", "trainer.max_epochs=1"],
        f"batch_size=2 virtual_devices={args.virtual}": [
            *common,
            "batch_size=2",
            f"virtual_devices={args.virtual}",
            "trainer.max_epochs=4",
        ],
        f"batch_size={step} (one rank)": [*common, f"batch_size={step}", "trainer.max_epochs=4"],
    }
    measured: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.repeats):
            for name, overrides in configs.items():
                measured[name].append(train_images_per_s(overrides, Path(workdir)))
    medians = {name: statistics.median(values) for name, values in measured.items()}
    reference = medians["literal batch_size=2"]
    lines = [
        "## Virtual devices against literal small batches",
        "",
        f"`python scripts/bench_virtual.py --norm {args.norm} --virtual {args.virtual} "
        f"--data {args.data} --repeats {args.repeats} --device {args.device}`; "
        f"{time.strftime('%Y-%m-%d')}, {cpu_model() if args.device == 'cpu' else 'GPU'}, "
        f"ResNet-20 + {args.norm} on {args.data}; medians of {args.repeats} interleaved runs of "
        "`python train.py` (training images/s from results.json).",
        "",
        "| run | train images/s | x literal batch 2 |",
        "| --- | --- | --- |",
    ]
    for name, value in medians.items():
        lines.append(f"| {name} | {value:.0f} | {value / reference:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
