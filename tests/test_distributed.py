"""DDP on two CPU processes (gloo): buffer reconciliation, global batch and lr, rank-0 outputs."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from normlab.norms import build_norm
from normlab.stats.callbacks import average_across_ranks, batch_dependent_buffers
from tests.helpers import free_port


def _model() -> nn.Module:
    return nn.Sequential(build_norm("bn", 4, activation="relu"), build_norm("gn", 4, groups=2))


def test_batch_dependent_buffers_are_the_running_statistics_of_bn_only() -> None:
    model = _model()
    buffers = batch_dependent_buffers(model)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert {id(b) for b in buffers} == {id(bn.running_mean), id(bn.running_var)}


def _average_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _model()
    for buffer in batch_dependent_buffers(model):
        buffer.fill_(float(rank + 1))
    average_across_ranks(batch_dependent_buffers(model))
    torch.save([b.clone() for b in batch_dependent_buffers(model)], f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_running_buffers_are_averaged_across_two_gloo_ranks(tmp_path: Path) -> None:
    port = free_port()
    mp.spawn(_average_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        for buffer in torch.load(tmp_path / f"{rank}.pt", weights_only=True):
            torch.testing.assert_close(buffer, torch.full_like(buffer, 1.5))


def _rank_data(rank: int) -> torch.Tensor:
    """Each rank's own samples, with different means so that per-rank statistics differ."""
    g = torch.Generator().manual_seed(10 + rank)
    return torch.randn(48, 3, 5, 5, generator=g) * (1 + rank) + 3.0 * rank


def _conv_bn() -> nn.Module:
    torch.manual_seed(0)  # the same weights on every rank, as DDP guarantees
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), build_norm("bn", 4))


def _precise_bn_worker(rank: int, world: int, port: int, out: str) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from normlab.stats import update_population_stats

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _conv_bn()
    x = _rank_data(rank)
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=8)
    update_population_stats(model, loader, num_samples=len(x))
    bn = model[1]
    torch.save([bn.running_mean.clone(), bn.running_var.clone()], f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_precise_bn_gives_identical_global_statistics_on_two_gloo_ranks(tmp_path: Path) -> None:
    mp.spawn(_precise_bn_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    mean0, var0 = torch.load(tmp_path / "0.pt", weights_only=True)
    mean1, var1 = torch.load(tmp_path / "1.pt", weights_only=True)
    torch.testing.assert_close(mean0, mean1, rtol=0, atol=0)
    torch.testing.assert_close(var0, var1, rtol=0, atol=0)
    with torch.no_grad():
        features = _conv_bn()[0](torch.cat([_rank_data(0), _rank_data(1)]))
    torch.testing.assert_close(mean0, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        var0, features.var(dim=(0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-5
    )
