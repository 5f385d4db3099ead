"""Forward+backward time of every registered norm, as a ratio to BatchNorm2d measured in the
same run (CPU or GPU). Usage: python scripts/bench_norms.py [--shape 32 64 32 32] [--device cpu]."""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from normlab.norms import available_norms, build_norm

ACTIVATION_FUSING = {"proxy_ln", "proxy_gn", "evonorm_s0", "frn"}


def time_layer(layer: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int = 3) -> float:
    """Median seconds of one forward+backward of `layer` on `x`."""
    grad = torch.randn_like(x)
    times = []
    for index in range(warmup + repeats):
        inp = x.detach().requires_grad_(True)
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        layer(inp).backward(grad)
        if x.is_cuda:
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench(
    shape: tuple[int, int, int, int], device: str, repeats: int
) -> list[tuple[str, float, float]]:
    """(name, seconds, ratio to bn) for every norm that can train on a plain input."""
    x = torch.randn(*shape, device=device)
    rows = []
    reference = None
    for name in ["bn", *[n for n in available_norms() if n != "bn"]]:
        try:
            layer = build_norm(
                name, shape[1], activation="relu" if name in ACTIVATION_FUSING else None
            ).to(device)
            if getattr(layer, "needs_conv", False):
                continue  # CBN needs its conv: measured in model-level benchmarks
            seconds = time_layer(layer.train(), x, repeats)
        except ValueError as error:
            print(f"skip {name}: {error}")
            continue
        reference = reference or seconds
        rows.append((name, seconds, seconds / reference))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=4, default=[32, 64, 32, 32])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rows = bench(tuple(args.shape), args.device, args.repeats)
    table = Table(
        title=f"forward+backward, shape {tuple(args.shape)}, {args.device}, {torch.get_num_threads()} threads"
    )
    for column in ("norm", "ms", "x bn"):
        table.add_column(column, justify="right")
    for name, seconds, ratio in rows:
        table.add_row(name, f"{seconds * 1e3:.2f}", f"{ratio:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
