"""Virtual devices end to end: k DDP ranks of batch_size in one process train exactly as k real
ranks would (the same data order, weights and reconciled buffers). Real ranks keep their own
buffers (normlab turns DDP's broadcast_buffers off), which the equivalence also checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from normlab.data.samplers import VirtualRankSampler
from tests.helpers import compose_config, run_in_process, run_train, shrunk


@pytest.mark.parametrize(("size", "world", "virtual", "batch"), [(50, 1, 4, 3), (37, 2, 3, 2)])
def test_virtual_rank_sampler_serves_each_ranks_ddp_share_in_chunks(
    size: int, world: int, virtual: int, batch: int
) -> None:
    dataset = TensorDataset(torch.arange(size))
    ranks = world * virtual
    for real_rank in range(world):
        sampler = VirtualRankSampler(dataset, batch, virtual, world, real_rank, seed=5)
        sampler.set_epoch(3)
        served = list(sampler)
        assert len(served) == len(sampler)
        shares = []
        for j in range(virtual):
            ddp = DistributedSampler(
                dataset, num_replicas=ranks, rank=real_rank * virtual + j, seed=5
            )
            ddp.set_epoch(3)
            shares.append(list(ddp))
        steps = len(shares[0]) // batch  # each rank's loader drops its last partial batch
        expected = [
            i
            for step in range(steps)
            for share in shares
            for i in share[step * batch : (step + 1) * batch]
        ]
        assert served == expected


COMMON = shrunk(
    "data=digits",
    "data.augment=false",  # DDP ranks draw augmentations from per-rank seeds
    "data.val_samples=16",
    "trainer.max_epochs=2",
    "callbacks.checkpoint.save_best=false",
    "batch_size=8",
    # float64: in float32, BN over 8 samples amplifies the ranks' different summation order
    # (1e-7) to 1e-3 within a dozen steps; in float64 both runs agree to 1e-15
    "trainer.precision=64-true",
)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return checkpoint["state_dict"]


EXTRA = {
    "bn": [],
    "ghost_bn": ["norm.ghost_batch_size=4"],
    # r and d active from the start: each rank corrects toward its own moving averages, which
    # the two runs reconcile at the same points
    "brn": ["norm.warmup_steps=0", "norm.r_max_steps=0", "norm.d_max_steps=0", "norm.r_max=1.5"],
}


@pytest.mark.parametrize(
    "norm",
    # ghost_bn's ghosts and brn's per-rank moving averages are also checked layer by layer
    # against separate ranks (tests/norms/test_virtual_devices.py); their runs are slow
    [n if n == "bn" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(EXTRA)],
)
def test_two_ddp_ranks_equal_two_virtual_devices(norm: str, tmp_path: Path) -> None:
    extra = EXTRA[norm]
    ddp = run_train([*COMMON, f"norm={norm}", *extra, "trainer=ddp_cpu"], tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # the virtual-device side in this process: the same run, without a second process start
    vd_results = run_in_process(
        [*COMMON, f"norm={norm}", *extra, "virtual_devices=2"], tmp_path / "vd" / "run"
    )
    assert torch.get_default_dtype() == torch.float32, "the float64 run leaked its dtype"
    ddp_results = json.loads((tmp_path / "ddp" / "run" / "results.json").read_text())
    # the DDP run itself: one result from rank 0, global batch and scaled lr, one run folder
    assert ddp_results["status"] == "completed" and ddp_results["world_size"] == 2
    assert ddp_results["lr"] == pytest.approx(0.1 * 16 / 256)  # optim.lr at ref_batch_size 256
    assert ddp.stdout.count("normlab: completed") == 1  # only rank 0 reports
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["run"]  # no folders per rank
    assert (vd_results["virtual_devices"], vd_results["global_batch_size"]) == (2, 16)
    assert vd_results["world_size"] == 1
    assert ddp_results["global_batch_size"] == 16
    assert vd_results["lr"] == pytest.approx(ddp_results["lr"])
    assert vd_results["steps"] == ddp_results["steps"] == 2 * (64 // 16)
    ddp_weights = _weights(tmp_path / "ddp" / "run")
    vd_weights = _weights(tmp_path / "vd" / "run")
    assert ddp_weights.keys() == vd_weights.keys()
    assert any("running_mean" in k for k in vd_weights)
    for key, value in ddp_weights.items():
        if value.is_floating_point():
            torch.testing.assert_close(vd_weights[key], value, rtol=1e-10, atol=1e-12, msg=key)
        else:
            assert torch.equal(vd_weights[key], value), key


def test_bad_virtual_devices_value(tmp_path: Path) -> None:
    """A user error, printed as one line without traceback (tests/test_bad_input.py), before
    training (a method that refuses virtual devices, such as cbn, takes the same path with its
    reason: tests/norms/test_virtual_devices.py)."""
    from normlab.results import USER_ERRORS
    from normlab.train import run

    with pytest.raises(USER_ERRORS, match="virtual_devices must be an int >= 1"):
        run(compose_config(["virtual_devices=0"]), tmp_path / "run")
