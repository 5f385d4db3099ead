"""Forward+backward time of every registered norm as a ratio to torch's nn.BatchNorm2d (train
mode) measured in the same run, at ResNet shapes; peers from timm and torchvision in the same
table. A second table times a 3x3 convolution followed by the norm at one shape (the only way
to time cbn, whose compensation goes through its convolution's weights; cbn runs with a full
window after burn-in).

Layers are timed in interleaved rounds (every layer a few calls per round, medians over all
rounds), so load from other processes hits all rows alike.

Usage: python scripts/bench_norms.py [--shape 32 64 32 32] [--threads 2] [--device cpu]
       [--compile [NAME ...]] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from hardware import command_line  # noqa: E402
from normlab.norms import available_norms, build_norm, get_norm_spec, notify_optimizer_step

Shape = tuple[int, int, int, int]
SHAPES: list[Shape] = [
    (128, 16, 32, 32),
    (128, 64, 8, 8),
    (32, 64, 32, 32),
    (32, 256, 14, 14),
    (2, 64, 32, 32),
]
CONV_SHAPE: Shape = (32, 64, 32, 32)
REFERENCE = "nn.BatchNorm2d (reference)"


@dataclass(frozen=True)
class Candidate:
    """One row of a table: a label and a builder of the module for a channel count."""

    label: str
    build: Callable[[int], nn.Module]
    kind: str = "normlab"  # "reference", "normlab" or "peer"


def bench_norm(name: str, channels: int, **params: object) -> nn.Module:
    """The norm as a model uses it: methods that include the activation get a ReLU."""
    activation = "relu" if get_norm_spec(name).fuses_activation else None
    return build_norm(name, channels, activation=activation, **params)


class ReferenceFormula(nn.Module):
    """Runs a layer's `_reference_forward` (its formula written out, as before the fast paths)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer._reference_forward(x)


def with_reference_formula() -> list[str]:
    """The methods whose layers keep a `_reference_forward`."""
    return [n for n in available_norms() if hasattr(bench_norm(n, 8), "_reference_forward")]


def population_bn(channels: int) -> nn.Module:
    """normlab's bn normalizing with its running statistics in train mode (FrozenBN)."""
    layer = build_norm("bn", channels)
    layer.stats_mode = "population"
    return layer


def peers() -> list[Candidate]:
    """Other libraries' layers for the same methods (timm, torchvision), labelled as peers."""
    from timm.layers import EvoNorm2dB0, EvoNorm2dS0, FilterResponseNormTlu2d
    from torchvision.ops import FrozenBatchNorm2d

    return [
        Candidate("peer: timm EvoNorm2dS0 (groups 8)", lambda c: EvoNorm2dS0(c, groups=8), "peer"),
        Candidate("peer: timm EvoNorm2dB0", EvoNorm2dB0, "peer"),
        Candidate("peer: timm FilterResponseNormTlu2d", FilterResponseNormTlu2d, "peer"),
        Candidate("bn, population mode (normlab)", population_bn, "normlab"),
        Candidate("peer: torchvision FrozenBatchNorm2d", FrozenBatchNorm2d, "peer"),
    ]


def candidates(compiled: list[str], conv: bool, formulas: bool = False) -> list[Candidate]:
    """The reference, every registered method, compiled variants, (norm alone) the peers and,
    with `formulas`, each method's written-out reference formula."""
    rows = [Candidate(REFERENCE, nn.BatchNorm2d, "reference")]
    names = ["bn", *[n for n in available_norms() if n != "bn"]]
    rows += [Candidate(n, lambda c, n=n: bench_norm(n, c)) for n in names]
    if formulas:
        rows += [
            Candidate(
                f"{n}, before (reference formula)",
                lambda c, n=n: ReferenceFormula(bench_norm(n, c)),
            )
            for n in with_reference_formula()
        ]
    rows += [
        Candidate(f"{n}, compiled", lambda c, n=n: bench_norm(n, c, compile=True)) for n in compiled
    ]
    return rows if conv else rows + peers()


def with_conv(build: Callable[[int], nn.Module], channels: int) -> nn.Module:
    """A 3x3 conv followed by the norm; a cbn is bound to the conv (no burn-in)."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    norm = build(channels)
    if getattr(norm, "needs_conv", False):
        norm.bind_conv(conv)
    return nn.Sequential(conv, norm)


def fill_window(model: nn.Module, x: torch.Tensor) -> None:
    """Run enough training steps for a cbn's window of past iterations to be full."""
    window = max((int(getattr(m, "window", 1)) for m in model.modules()), default=1)
    if any(hasattr(m, "on_optimizer_step") for m in model.modules()):
        for _ in range(window):
            model(x).sum().backward()
            notify_optimizer_step(model)


def step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    """Seconds of one forward+backward of `layer` on `x`."""
    inp = x.detach().requires_grad_(True)
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    layer(inp).backward(grad)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def build_all(
    rows: list[Candidate], shape: Shape, device: str, conv: bool
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The modules for one shape (train mode), and the reason for each row that cannot run."""
    x = torch.randn(*shape, device=device)
    layers, skipped = {}, {}
    for row in rows:
        try:
            layer = (with_conv(row.build, shape[1]) if conv else row.build(shape[1])).to(device)
            norm = layer[-1] if conv else layer
            if not conv and getattr(norm, "needs_conv", False):
                skipped[row.label] = "needs its convolution: timed in the conv + norm table"
                continue
            layer.train()
            check = getattr(norm, "check_batch_size", None)
            if check is not None:
                check(shape[0])
            if conv:
                fill_window(layer, x)
            layers[row.label] = layer
        except ValueError as error:
            skipped[row.label] = str(error)
    return layers, skipped


def time_shape(
    layers: dict[str, nn.Module],
    shape: Shape,
    device: str,
    rounds: int,
    per_round: int,
    stat: str = "median",
) -> dict[str, float]:
    """Median (or minimum) seconds per forward+backward of each layer, in interleaved rounds."""
    x = torch.randn(*shape, device=device)
    grad = torch.randn(*shape, device=device)
    for layer in layers.values():  # warm-up (and compilation)
        for _ in range(2):
            step(layer, x, grad)
    times: dict[str, list[float]] = {label: [] for label in layers}
    for _ in range(rounds):
        for label, layer in layers.items():
            times[label] += [step(layer, x, grad) for _ in range(per_round)]
    pick = min if stat == "min" else (lambda t: sorted(t)[len(t) // 2])
    return {label: pick(t) for label, t in times.items()}


def machine() -> str:
    """CPU model name (lscpu), else platform.processor(), plus the GPU when one is used."""
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    if torch.cuda.is_available():
        name += f"; GPU {torch.cuda.get_device_name()}"
    return name


def fmt_shape(shape: Shape) -> str:
    return "(" + ",".join(map(str, shape)) + ")"


def ratio_table(
    rows: list[Candidate], shapes: list[Shape], results: dict[Shape, dict[str, float]]
) -> list[list[str]]:
    """Rows of text: the reference in ms, every other row as a multiple of it (rows timed at no
    shape are left out)."""
    table = []
    for row in rows:
        if not any(row.label in results[shape] for shape in shapes):
            continue
        cells = [row.label if row.kind != "reference" else f"{REFERENCE}, ms"]
        for shape in shapes:
            seconds = results[shape].get(row.label)
            reference = results[shape].get(REFERENCE)
            if seconds is None or reference is None:
                cells.append("-")
            elif row.kind == "reference":
                cells.append(f"{seconds * 1e3:.2f}")
            else:
                cells.append(f"{seconds / reference:.2f}")
        table.append(cells)
    return table


def print_table(title: str, header: list[str], body: list[list[str]]) -> None:
    table = Table(title=title)
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 else "right")
    for cells in body:
        table.add_row(*cells)
    Console().print(table)


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def run_table(
    rows: list[Candidate],
    shapes: list[Shape],
    device: str,
    rounds: int,
    per_round: int,
    conv: bool,
    stat: str = "median",
) -> tuple[dict[Shape, dict[str, float]], dict[str, str]]:
    """Time every row at every shape; the reasons rows were skipped (by label)."""
    results, skipped = {}, {}
    for shape in shapes:
        layers, reasons = build_all(rows, shape, device, conv)
        for label, reason in reasons.items():
            skipped.setdefault(label, f"{fmt_shape(shape)}: {reason}")
        results[shape] = time_shape(layers, shape, device, rounds, per_round, stat)
        del layers
    return results, skipped


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shape", type=int, nargs=4, default=None, help="one N C H W shape (default: all five)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--per-round", type=int, default=1, help="calls per layer and round")
    parser.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="median (default) or minimum of the timings (min resists load from other processes)",
    )
    parser.add_argument(
        "--compile",
        nargs="*",
        default=None,
        metavar="NAME",
        help="also time these methods built with compile=True (no name: every method)",
    )
    parser.add_argument(
        "--reference-formulas",
        action="store_true",
        help="also time each method's written-out formula (_reference_forward: the code before "
        "the fast paths)",
    )
    parser.add_argument("--no-conv", action="store_true", help="skip the conv + norm table")
    parser.add_argument("--markdown", default=None, metavar="PATH", help="write the tables here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [tuple(args.shape)] if args.shape else SHAPES
    compiled = args.compile if args.compile else ([] if args.compile is None else available_norms())
    started = time.perf_counter()

    rows = candidates(compiled, conv=False, formulas=args.reference_formulas)
    results, skipped = run_table(
        rows, shapes, args.device, args.rounds, args.per_round, False, args.stat
    )
    header = ["method", *[fmt_shape(s) for s in shapes]]
    body = ratio_table(rows, shapes, results)
    where = f"{args.device}, {torch.get_num_threads()} threads"
    title = f"forward+backward, norm alone, x {REFERENCE} ({where})"
    print_table(title, header, body)

    conv_body: list[list[str]] = []
    conv_rounds = max(args.rounds // 3, 1)
    conv_shape = shapes[0] if args.shape else CONV_SHAPE
    if not args.no_conv:
        conv_rows = candidates(compiled, conv=True)
        conv_results, conv_skipped = run_table(
            conv_rows, [conv_shape], args.device, conv_rounds, args.per_round, True, args.stat
        )
        for label, reason in conv_skipped.items():
            skipped.setdefault(f"{label} (conv)", reason)
        conv_body = ratio_table(conv_rows, [conv_shape], conv_results)
        print_table(
            f"forward+backward, 3x3 conv + norm, x conv + {REFERENCE} ({where})",
            ["method", fmt_shape(conv_shape)],
            conv_body,
        )
    for label, reason in skipped.items():
        print(f"skipped {label}: {reason}")
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s")

    if args.markdown:
        command = command_line()
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = [
            "## Per-method forward+backward",
            "",
            f"Command: `{command}`; torch {torch.__version__}; {torch.get_num_threads()} threads; "
            f"{args.device}; {now}; machine: {machine()}.",
            "",
            f"Each cell is the {args.stat} forward+backward time of the layer alone (train mode) as a "
            f"multiple of torch's nn.BatchNorm2d (train mode) at the same shape in the same run "
            f"(its own row in ms); {args.rounds} interleaved rounds of {args.per_round} calls. "
            "Methods that include their activation are built with activation relu. "
            "Rows labelled peer are other libraries' layers.",
            "",
            markdown_table(header, body),
        ]
        if conv_body:
            text += [
                "",
                f"### 3x3 convolution + norm, {fmt_shape(conv_shape)}",
                "",
                f"As a multiple of the same convolution + nn.BatchNorm2d; {conv_rounds} rounds.",
                "",
                markdown_table(["method", fmt_shape(conv_shape)], conv_body),
            ]
        if skipped:
            text += ["", *[f"- skipped {label}: {reason}" for label, reason in skipped.items()]]
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write("\n".join(text) + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
