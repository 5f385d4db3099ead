"""Framework overhead: `python train.py` against a plain PyTorch loop, images per second.

Both sides train the same normlab model (normlab.models.build_model + norm_factory) on the same
datamodule loaders with the same SGD optimizer and learning rate (normlab.job.optim), at the same
per-device batch, in this one process, with the same torch thread count:

- train.py: normlab.train.run(cfg, folder) on the config `python train.py` composes (Hydra's
  compose API on conf/), so Lightning, normlab's LightningModule, callbacks, CSV logger,
  checkpoints and the progress bar (`--progress`, default: the config's) run as in a job. The
  number is the run's own `train_images_per_s` (normlab.job.callbacks.ThroughputMonitor).
- plain: model.train(); for each batch: to(device), zero_grad(), forward, cross_entropy,
  backward, step (plus notify_optimizer_step for layers that need it, e.g. cbn).

Fair comparison: both count the same images in the same way. In every epoch the clock starts at
the end of step `skip` (ThroughputMonitor's default, 2) and stops at the end of the epoch's last
step, so data loading (iterating the DataLoader) counts on both sides, and warm-up steps,
validation, checkpoints and start-up count on neither. On CUDA the clock reads after
torch.cuda.synchronize() at those two points only. Repeats are interleaved (the order of the two
sides alternates) and medians are reported; the ratio is median(train.py) / median(plain).

With `--settings` it measures whole-model precision and memory layouts instead (the
"Whole-model precision" section): every setting on both sides, each row also as a ratio to the
float32 plain loop of the same batch. The plain loop then runs forward and loss under the same
autocast as trainer.precision (bf16-mixed: bfloat16; 16-mixed: float16 with a GradScaler) on
the model built with the same model.channels_last.

Usage: python scripts/bench_train.py [--batch-sizes 2 128] [--repeats 5] [--norm bn]
       [--data digits] [--device cpu|cuda] [--markdown bench.md]
       [--settings float32 channels_last bf16 bf16+channels_last]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
sys.path.insert(0, str(REPO_ROOT / "src"))

from hardware import command_line, cpu_model  # noqa: E402
from normlab.data import build_datamodule  # noqa: E402
from normlab.job.callbacks import ThroughputMonitor  # noqa: E402
from normlab.job.optim import build_optimizer, scaled_lr  # noqa: E402
from normlab.job.spec import norm_params  # noqa: E402
from normlab.models import build_model  # noqa: E402
from normlab.norms import norm_factory, notify_optimizer_step  # noqa: E402
from normlab.train import run  # noqa: E402

try:  # normlab's LightningModule steps a fused SGD; older versions the default kernel
    from normlab.job.lit import guard_optimizer
except ImportError:  # pragma: no cover - benchmarking an older checkout
    guard_optimizer = None  # type: ignore[assignment]

SKIP = ThroughputMonitor(1).skip  # steps left out at the start of every epoch, both sides
# Whole-model settings (`--settings`): the train.py overrides of each
SETTINGS: dict[str, list[str]] = {
    "float32": [],
    "channels_last": ["model.channels_last=true"],
    "bf16": ["trainer.precision=bf16-mixed"],
    "bf16+channels_last": ["trainer.precision=bf16-mixed", "model.channels_last=true"],
    "fp16+channels_last": ["trainer.precision=16-mixed", "model.channels_last=true"],
}
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def compose(overrides: list[str]) -> DictConfig:
    """The config `python train.py <overrides>` runs with (no Hydra run folder)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from normlab.config.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def plan(
    cfg: DictConfig, batch: int, steps: int, max_epochs: int = 3
) -> tuple[int, int | None, int]:
    """(epochs, training samples or None for all, steps per epoch) so that about `steps` steps
    are timed (at most `max_epochs` epochs), with `SKIP` more per epoch untimed."""
    data = build_datamodule(cfg.data, batch, seed=int(cfg.seed))
    data.setup("fit")
    available = len(data.train_set) // batch  # type: ignore[arg-type]
    per_epoch = min(available, steps + SKIP)
    if per_epoch <= SKIP:
        raise SystemExit(f"batch {batch}: only {available} steps per epoch, need > {SKIP}")
    epochs = min(max_epochs, math.ceil(steps / (per_epoch - SKIP)))
    return epochs, (per_epoch * batch if per_epoch < available else None), per_epoch


def overrides_for(args: argparse.Namespace, batch: int, epochs: int, samples: int | None) -> list:
    """The command-line overrides of the equivalent `python train.py` job."""
    items = [
        f"data={args.data}",
        f"norm={args.norm}",
        f"model={args.model}",
        f"batch_size={batch}",
        f"trainer.max_epochs={epochs}",
        "print_config=false",
        *([f"callbacks.progress={args.progress}"] if args.progress else []),
        *(["trainer=gpu"] if args.device == "cuda" else []),
        *([f"data.train_samples={samples}"] if samples else []),
        *args.override,
    ]
    if HAS_THREADS_KEY:  # conf/train.yaml has `threads` from the thread-pinning change on
        items.append(f"threads={args.threads}")
    return items


def lightning_images_per_s(overrides: list[str]) -> float:
    """normlab.train.run on the composed config: the run's own train_images_per_s."""
    cfg = compose(overrides)
    with tempfile.TemporaryDirectory() as folder:
        results = run(cfg, Path(folder) / "run")
    torch.set_num_threads(BENCH_THREADS)  # in case the run changed them
    if results.get("status") != "completed" or not results.get("train_images_per_s"):
        raise RuntimeError(f"train.py run did not complete: {results.get('status')}")
    return float(results["train_images_per_s"])


def plain_images_per_s(overrides: list[str], device: str) -> float:
    """A plain PyTorch loop over the same model, data, optimizer and batch."""
    cfg = compose(overrides)
    torch.manual_seed(int(cfg.seed))
    name, params = norm_params(cfg.norm)
    data = build_datamodule(cfg.data, int(cfg.batch_size), seed=int(cfg.seed))
    data.setup("fit")
    model = build_model(
        cfg.model, norm_factory(name, **params), data.num_classes, data.in_channels, data.image_size
    ).to(device)
    lr = scaled_lr(float(cfg.optim.lr), int(cfg.batch_size), cfg.optim.get("ref_batch_size"))
    optimizer = build_optimizer(model, OmegaConf.to_container(cfg.optim), lr)  # type: ignore[arg-type]
    if guard_optimizer is not None:  # the optimizer kernel train.py steps with (fused SGD)
        guard_optimizer(optimizer, torch.zeros(1, device=device))
    notify = any(hasattr(m, "on_optimizer_step") for m in model.modules())
    dtype = AUTOCAST.get(str(cfg.trainer.get("precision", "32-true")))
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    loader = data.train_dataloader()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    images, seconds = 0, 0.0
    model.train()
    for epoch in range(int(cfg.trainer.max_epochs)):
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        start = None
        counted = 0
        for index, (x, y) in enumerate(loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad()
            with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if notify:
                notify_optimizer_step(model)
            if index == SKIP - 1:
                sync()
                start = time.perf_counter()
            elif index >= SKIP:
                counted += len(y)
        sync()
        if start is not None and counted:
            seconds += time.perf_counter() - start
            images += counted
    return images / seconds


def section_head(args: argparse.Namespace, title: str) -> list[str]:
    """A section's title, command line, date, torch, threads and machine."""
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    return [
        f"## {title}",
        "",
        f"Command: `{command_line()}`  ",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; torch {torch.__version__}; "
        f"{args.threads} thread(s); CPU: {cpu_model()}; device: {device}  ",
    ]


def markdown(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    """The 'Framework overhead' section: setup, then one row per batch size."""
    lines = [
        *section_head(args, "Framework overhead"),
        f"Model {args.model} + {args.norm}, data {args.data}, SGD as conf/optim/sgd.yaml. "
        f"train.py = `normlab.train.run` on the composed `python train.py` config (in process); "
        f"plain = zero_grad, forward, cross_entropy, backward, step (the same fused SGD). "
        f"Both count the images of "
        f"every step after the first {SKIP} of each epoch, data loading included, validation "
        f"and checkpoints excluded; {args.repeats} interleaved repeats, medians.",
        "",
        "| batch | steps timed | plain img/s | train.py img/s | ratio |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['batch']} | {row['steps']} | {row['plain']:.0f} | {row['lightning']:.0f} "
            f"| {row['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def settings_markdown(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    """The 'Whole-model precision' section: one row per batch size and setting."""
    lines = [
        *section_head(args, "Whole-model precision and memory layout"),
        f"Model {args.model} + {args.norm}, data {args.data}, SGD as conf/optim/sgd.yaml; "
        "every setting on both sides: train.py with its overrides, the plain loop under the "
        "same autocast on the same layout (every norm layer computes in float32 under "
        f"autocast). Images of every step after the first {SKIP} of each epoch; "
        f"{args.repeats} interleaved repeats, medians; 'vs float32' divides by the float32 "
        "plain loop of the same batch.",
        "",
        "| batch | setting | overrides | plain img/s | train.py img/s | train.py / plain "
        "| plain vs float32 | train.py vs float32 |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['batch']} | {row['setting']} | `{' '.join(SETTINGS[row['setting']]) or '-'}` "
            f"| {row['plain']:.0f} | {row['lightning']:.0f} | {row['ratio']:.2f} "
            f"| {row['plain_vs_fp32']:.2f} | {row['lightning_vs_fp32']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def quiet() -> None:
    """Keep Lightning's start-up messages and known warnings out of the report."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


def main() -> None:
    global BENCH_THREADS, HAS_THREADS_KEY
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 128])
    parser.add_argument("--steps", type=int, default=120, help="timed steps per run (about)")
    parser.add_argument(
        "--max-epochs", type=int, default=3, help="at most this many epochs per run (large batches)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--norm", default="bn")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads"
    )
    parser.add_argument(
        "--progress", default=None, help="callbacks.progress of the train.py side (default: config)"
    )
    parser.add_argument("--override", nargs="*", default=[], help="more train.py overrides")
    parser.add_argument("--markdown", type=Path, default=None, help="write the section here")
    parser.add_argument(
        "--settings",
        nargs="*",
        choices=list(SETTINGS),
        default=None,
        help="whole-model settings to compare (float32 first: the reference of the ratios)",
    )
    args = parser.parse_args()
    if args.settings and args.settings[0] != "float32":
        parser.error("--settings: put float32 first, the reference of every ratio")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible")
    BENCH_THREADS = args.threads
    HAS_THREADS_KEY = "threads" in compose([])
    torch.set_num_threads(args.threads)
    quiet()

    # One short untimed run of each side: first-use costs (imports, kernels) stay out.
    _, warm_samples, _ = plan(compose([f"data={args.data}"]), args.batch_sizes[0], 4)
    warm = overrides_for(args, args.batch_sizes[0], 1, warm_samples)
    lightning_images_per_s(warm)
    plain_images_per_s(warm, args.device)

    rows = []
    for batch in args.batch_sizes:
        base = compose([f"data={args.data}", f"batch_size={batch}"])
        epochs, samples, per_epoch = plan(base, batch, args.steps, args.max_epochs)
        for setting in args.settings or [None]:
            extra = SETTINGS[setting] if setting else []
            overrides = [*overrides_for(args, batch, epochs, samples), *extra]
            plain, lightning = [], []
            for repeat in range(args.repeats):
                order = ("plain", "lightning") if repeat % 2 == 0 else ("lightning", "plain")
                for side in order:
                    if side == "plain":
                        plain.append(plain_images_per_s(overrides, args.device))
                    else:
                        lightning.append(lightning_images_per_s(overrides))
                print(
                    f"batch {batch} {setting or ''} repeat {repeat}: plain {plain[-1]:.0f} "
                    f"img/s, train.py {lightning[-1]:.0f} img/s",
                    flush=True,
                )
            row = {
                "batch": batch,
                "setting": setting,
                "steps": epochs * (per_epoch - SKIP),
                "plain": statistics.median(plain),
                "lightning": statistics.median(lightning),
            }
            row["ratio"] = row["lightning"] / row["plain"]
            reference = next(
                (r["plain"] for r in rows if r["batch"] == batch and r["setting"] == "float32"),
                row["plain"],
            )
            row["plain_vs_fp32"] = row["plain"] / reference
            row["lightning_vs_fp32"] = row["lightning"] / reference
            rows.append(row)
            print(
                f"batch {batch} {setting or ''}: plain {row['plain']:.0f} img/s, train.py "
                f"{row['lightning']:.0f} img/s, ratio {row['ratio']:.2f} (medians of "
                f"{args.repeats})",
                flush=True,
            )
    text = settings_markdown(args, rows) if args.settings else markdown(args, rows)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


BENCH_THREADS = 1
HAS_THREADS_KEY = False

if __name__ == "__main__":
    main()
