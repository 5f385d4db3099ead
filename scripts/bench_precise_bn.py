"""What PreciseBN costs: normlab's update_population_stats against the bare forward passes it
needs and against fvcore's precise BN, and as a fraction of a training epoch.

ResNet-20 + BN on real CIFAR-10 (the shared JPEG copy, unpacked into .cache) or, where that
archive is absent, random tensors of the same shape (said so in the output). All timings come
from the same run, interleaved over `--repeats` rounds (medians):

(a) bare: the same loader and batches, model in train mode under torch.no_grad, no recording
    (the floor: the forward passes PreciseBN cannot avoid);
(b) normlab: `update_population_stats` (eval mode, layers in "record" mode);
(c) fvcore: `fvcore.nn.precise_bn.update_bn_stats` (train mode, momentum-1 trick) on the same
    batches, if fvcore is installed;
(d) one training epoch, estimated from `--train-steps` SGD steps (forward + backward + step) at
    the training batch size on the training loader, extrapolated to the whole training set.

Usage: python scripts/bench_precise_bn.py [--samples 10000] [--batch-size 128] [--device cpu]
       [--repeats 3] [--train-steps 20] [--markdown PATH]
Set MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 for quiet CPU timings.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hardware import command_line, cpu_model, repo_relative
from normlab.data.base import ImageDataModule
from normlab.data.build import build_datamodule
from normlab.data.shared import ensure_shared_cifar10
from normlab.models.registry import build_model
from normlab.norms import norm_factory
from normlab.stats.callbacks import training_loader
from normlab.stats.precise_bn import update_population_stats

CIFAR_TRAIN_IMAGES = 50_000


def load_data(batch_size: int, synthetic_samples: int) -> tuple[ImageDataModule, str]:
    """CIFAR-10 from the shared archive, else synthetic 32x32 RGB tensors; and a description."""
    try:
        root = ensure_shared_cifar10()
        module = build_datamodule({"name": "folder", "root": str(root)}, batch_size)
        description = f"CIFAR-10 (data=folder data.root={repo_relative(root)})"
    except FileNotFoundError as error:
        print(f"NOTE: {error}\nNOTE: timing random 32x32 RGB tensors (data=synthetic) instead")
        cfg = {"name": "synthetic", "num_samples": synthetic_samples, "image_size": 32}
        module = build_datamodule(cfg, batch_size)
        description = f"synthetic 32x32 RGB, {synthetic_samples} samples (no CIFAR-10 archive)"
    module.setup("fit")
    return module, description


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of `work()`, synchronized on a GPU.

    The CPU time is what to compare on a machine shared with other jobs (with --threads 1 it
    excludes time spent waiting for a core)."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    work()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def same_batches(loader: DataLoader, num_samples: int) -> Iterator[Tensor]:
    """The inputs update_population_stats uses: batches cut to `num_samples` in all, never a
    final batch of one sample."""
    seen = 0
    for inputs, _ in loader:
        take = min(len(inputs), num_samples - seen)
        if take < 2 and seen > 0:
            return
        yield inputs[:take]
        seen += take
        if seen >= num_samples:
            return


def bare_passes(model: nn.Module, loader: DataLoader, samples: int, device: torch.device) -> None:
    """(a) Train-mode forward passes under no_grad over the same batches, nothing recorded."""
    model.train()
    with torch.no_grad():
        for inputs in same_batches(loader, samples):
            model(inputs.to(device, non_blocking=True))


def fvcore_passes(
    model: nn.Module, loader: DataLoader, samples: int, batch_size: int, device: torch.device
) -> None:
    """(c) fvcore's update_bn_stats on the same batches (model in train mode, as it requires)."""
    from fvcore.nn.precise_bn import update_bn_stats

    count = sum(1 for _ in batch_sizes(samples, batch_size))  # fvcore's num_iters
    model.train()
    inputs = (b.to(device, non_blocking=True) for b in same_batches(loader, samples))
    update_bn_stats(model, inputs, count)


def batch_sizes(num_samples: int, batch_size: int) -> Iterator[int]:
    """The batch sizes same_batches yields from a loader of whole `batch_size` batches."""
    seen = 0
    while seen < num_samples:
        take = min(batch_size, num_samples - seen)
        if take < 2 and seen > 0:
            return
        yield take
        seen += take


def fvcore_available() -> bool:
    """Whether fvcore can be imported (it is an optional comparison)."""
    try:
        import fvcore.nn.precise_bn  # noqa: F401
    except ImportError:
        return False
    return True


def epoch_seconds(
    model: nn.Module, module: ImageDataModule, steps: int, device: torch.device
) -> tuple[float, float]:
    """(d) Wall and CPU seconds of one training epoch over the whole training set,
    extrapolated per image from `steps` timed SGD steps (after 2 warm-up steps) on the
    training loader."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    batches = iter(module.train_dataloader())
    warmup, images = 2, 0
    start, cpu = time.perf_counter(), time.process_time()
    for index in range(warmup + steps):
        inputs, targets = next(batches)
        loss = loss_fn(model(inputs.to(device)), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if index == warmup - 1:
            sync(device)
            start, cpu = time.perf_counter(), time.process_time()
        elif index >= warmup:
            images += len(inputs)
    sync(device)
    per_image = len(module.train_set) / images  # type: ignore[arg-type]
    return (time.perf_counter() - start) * per_image, (time.process_time() - cpu) * per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10_000, help="PreciseBN samples")
    parser.add_argument("--batch-size", type=int, default=128, help="PreciseBN batch size")
    parser.add_argument("--train-batch-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=20, help="timed steps for (d)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, default=None, help="write a Markdown section")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    module, data_description = load_data(args.train_batch_size, CIFAR_TRAIN_IMAGES)
    model = build_model(
        {"name": "resnet20"}, norm_factory("bn"), module.num_classes, module.in_channels, 32
    ).to(device)

    def loader() -> DataLoader:
        """A fresh PreciseBN loader: every run sees the same batches and augmentations."""
        return training_loader(module, args.batch_size, args.seed)

    runners: dict[str, Callable[[nn.Module], object]] = {
        "bare": lambda m: bare_passes(m, loader(), args.samples, device),
        "normlab": lambda m: update_population_stats(m, loader(), args.samples),
    }
    if fvcore_available():
        runners["fvcore"] = lambda m: fvcore_passes(
            m, loader(), args.samples, args.batch_size, device
        )
    else:
        print("fvcore not installed (pip install fvcore): (c) skipped")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    runners["bare"](copy.deepcopy(model))  # warm-up: allocator, kernels, loader
    for round_index in range(args.repeats):
        for name, run in runners.items():
            candidate = copy.deepcopy(model)
            torch.manual_seed(args.seed)  # as loader(): also for loaders using the global RNG
            times[name].append(timed(device, lambda run=run, m=candidate: run(m)))
        print(
            f"round {round_index + 1}: "
            + ", ".join(
                f"{name} {t[-1][0]:.2f} s ({t[-1][1]:.2f} s CPU)" for name, t in times.items()
            ),
            flush=True,
        )
    medians = {
        name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
        for name, t in times.items()
    }
    epoch = epoch_seconds(model, module, args.train_steps, device)
    train_images = len(module.train_set)  # type: ignore[arg-type]
    labels = {
        "bare": "(a) bare train-mode forward passes, no_grad",
        "normlab": "(b) normlab update_population_stats",
        "fvcore": "(c) fvcore update_bn_stats",
    }
    rows = [(labels[name], *medians[name]) for name in medians]
    rows.append(
        (
            f"(d) one training epoch: {args.train_steps} steps of {args.train_batch_size}, "
            f"extrapolated to {train_images} images",
            *epoch,
        )
    )
    pairs = [("(b)/(a)", "normlab", "bare"), ("(c)/(a)", "fvcore", "bare")]
    pairs += [("(b)/epoch", "normlab", None), ("(a)/epoch", "bare", None)]
    pairs += [("(c)/epoch", "fvcore", None)]
    ratios = [
        (
            label,
            *(medians[top][k] / (medians[bottom][k] if bottom else epoch[k]) for k in (0, 1)),
        )
        for label, top, bottom in pairs
        if top in medians
    ]
    threads = torch.get_num_threads()
    print(
        f"\n{data_description}; ResNet-20 + BN; {args.samples} PreciseBN samples in batches of "
        f"{args.batch_size}; device {device}, {threads} threads; medians of {args.repeats}"
    )
    if train_images != CIFAR_TRAIN_IMAGES:
        print(f"NOTE: the training set here has {train_images} images, not CIFAR-10's 50,000")
    print(f"  {'':<72} {'wall':>9} {'CPU':>9}")
    for label, wall, cpu in rows:
        print(f"  {label:<72} {wall:8.2f}s {cpu:8.2f}s")
    for label, wall, cpu in ratios:
        print(f"  {label:<72} {wall:9.3f} {cpu:9.3f}")
    if args.markdown:
        write_markdown(args, rows, ratios, data_description, device, threads)


def write_markdown(
    args: argparse.Namespace,
    rows: list[tuple[str, float, float]],
    ratios: list[tuple[str, float, float]],
    data_description: str,
    device: torch.device,
    threads: int,
) -> None:
    """Write the "PreciseBN cost" section for docs/performance.md."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    lines = [
        "## PreciseBN cost",
        "",
        f"`{command_line()}`",
        "",
        f"torch {torch.__version__}, {threads} threads, device {device} ({hardware}), {now}. "
        f"{data_description}; ResNet-20 + BN; {args.samples} samples in batches of "
        f"{args.batch_size}; medians of {args.repeats} interleaved rounds. The epoch is "
        f"extrapolated from {args.train_steps} timed training steps. CPU: process CPU time "
        "(comparable on a shared machine with one thread).",
        "",
        "| what | wall s | CPU s |",
        "| --- | ---: | ---: |",
        *(f"| {label} | {wall:.2f} | {cpu:.2f} |" for label, wall, cpu in rows),
        "",
        "| ratio | wall | CPU |",
        "| --- | ---: | ---: |",
        *(f"| {label} | {wall:.3f} | {cpu:.3f} |" for label, wall, cpu in ratios),
        "",
    ]
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text("\n".join(lines))
    print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
