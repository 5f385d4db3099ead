"""Forward+backward time of every registered norm, as a ratio to BatchNorm2d measured in the
same run (CPU or GPU): the norm layer alone, and a 3x3 convolution followed by the norm (the
only way to time cbn, whose compensation goes through its convolution's weights; cbn is timed
with a full window after burn-in).
Usage: python scripts/bench_norms.py [--shape 32 64 32 32] [--device cpu]."""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from normlab.norms import available_norms, build_norm, get_norm_spec, notify_optimizer_step


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


def bench_norm(name: str, channels: int, **params: object) -> torch.nn.Module:
    """The norm as a model uses it: methods that include the activation get a ReLU."""
    activation = "relu" if get_norm_spec(name).fuses_activation else None
    return build_norm(name, channels, activation=activation, **params)


def conv_then_norm(name: str, channels: int, device: str) -> torch.nn.Module:
    """A 3x3 conv followed by the norm; a cbn is bound to the conv (no burn-in)."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    norm = bench_norm(name, channels, **({"burnin_steps": 0} if name == "cbn" else {}))
    if getattr(norm, "needs_conv", False):
        norm.bind_conv(conv)
    return torch.nn.Sequential(conv, norm).to(device)


def fill_window(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Run enough training steps for a cbn's window of past iterations to be full."""
    window = max((int(getattr(m, "window", 1)) for m in model.modules()), default=1)
    if any(hasattr(m, "on_optimizer_step") for m in model.modules()):
        for _ in range(window):
            model(x).sum().backward()
            notify_optimizer_step(model)


def bench(
    shape: tuple[int, int, int, int], device: str, repeats: int, with_conv: bool = False
) -> list[tuple[str, float, float]]:
    """(name, seconds, ratio to bn) for every norm (cbn only `with_conv`)."""
    x = torch.randn(*shape, device=device)
    rows = []
    reference = None
    for name in ["bn", *[n for n in available_norms() if n != "bn"]]:
        try:
            if with_conv:
                layer = conv_then_norm(name, shape[1], device).train()
                fill_window(layer, x)
            else:
                layer = bench_norm(name, shape[1]).to(device)
                if getattr(layer, "needs_conv", False):
                    continue  # timed in the conv+norm table
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
    where = f"shape {tuple(args.shape)}, {args.device}, {torch.get_num_threads()} threads"
    for with_conv, what in ((False, "norm alone"), (True, "3x3 conv + norm")):
        rows = bench(tuple(args.shape), args.device, args.repeats, with_conv)
        table = Table(title=f"forward+backward, {what}, {where}")
        for column in ("norm", "ms", "x bn"):
            table.add_column(column, justify="right")
        for name, seconds, ratio in rows:
            table.add_row(name, f"{seconds * 1e3:.2f}", f"{ratio:.2f}")
        Console().print(table)


if __name__ == "__main__":
    main()
