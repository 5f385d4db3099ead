"""hydra/launcher=slurm asks SLURM for what the trainer needs, refuses contradictions and
requests no node can hold before submitting, and records a job SLURM killed (normlab.platform.slurm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from normlab.platform.slurm import (
    Partition,
    SlurmRequestError,
    _gres_gpus,
    check_fits,
    record_lost_job,
    slurm_request,
)
from normlab.results import write_results
from tests.helpers import compose_config

pytestmark = pytest.mark.fast  # in-process: make test-fast

AUTO = {"nodes": "auto", "gpus_per_node": "auto", "tasks_per_node": "auto", "cpus_per_task": "auto"}
CPU_NODE = Partition("debug", cpus=2, gpus=0)
GPU_NODE = Partition("gpu", cpus=64, gpus=8)


def test_slurm_launcher_yaml_derives_everything_from_the_trainer() -> None:
    launcher = OmegaConf.load(Path(__file__).parents[1] / "conf/hydra/launcher/slurm.yaml")
    assert {key: launcher[key] for key in AUTO} == AUTO


def test_a_cpu_trainer_gets_no_gpu_and_fits_a_small_node() -> None:
    request = slurm_request(compose_config(["trainer=cpu"]), AUTO, CPU_NODE)
    assert request == {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 2}
    check_fits(request, CPU_NODE)
    threads = slurm_request(compose_config(["trainer=cpu", "threads=1"]), AUTO, CPU_NODE)
    assert threads["cpus_per_task"] == 1


def test_a_gpu_trainer_gets_one_task_per_gpu() -> None:
    cfg = compose_config(["trainer=ddp", "trainer.devices=4", "+trainer.num_nodes=2"])
    request = slurm_request(cfg, AUTO, GPU_NODE)
    assert request == {"nodes": 2, "gpus_per_node": 4, "tasks_per_node": 4, "cpus_per_task": 8}
    check_fits(request, GPU_NODE)


def test_a_gpu_request_with_a_cpu_trainer_is_refused() -> None:
    with pytest.raises(SlurmRequestError, match="hold GPUs and train on the CPU"):
        slurm_request(compose_config(["trainer=cpu"]), {**AUTO, "gpus_per_node": 1})


def test_a_gpu_trainer_without_gpus_is_refused() -> None:
    with pytest.raises(SlurmRequestError, match="would find no GPU"):
        slurm_request(compose_config(["trainer=gpu"]), {**AUTO, "gpus_per_node": 0})
    with pytest.raises(SlurmRequestError, match="trainer.devices=-1"):
        slurm_request(compose_config(["trainer=ddp"]), AUTO)


def test_tasks_that_are_not_the_ranks_are_refused() -> None:
    with pytest.raises(SlurmRequestError, match="one task is one rank"):
        slurm_request(compose_config(["trainer=cpu"]), {**AUTO, "tasks_per_node": 0})


def test_requests_no_node_can_hold_are_refused_with_what_fits() -> None:
    request = slurm_request(compose_config(["trainer=cpu"]), {**AUTO, "cpus_per_task": 8})
    with pytest.raises(SlurmRequestError, match="cpus_per_task=2 or fewer"):
        check_fits(request, CPU_NODE)
    gpu = slurm_request(compose_config(["trainer=gpu"]), AUTO)
    with pytest.raises(SlurmRequestError, match="partition debug have 0"):
        check_fits(gpu, CPU_NODE)


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [("(null)", 0), ("gpu:4", 4), ("gpu:a100:8(S:0-1)", 8), ("gpu:2,shard:8", 2)],
)
def test_sinfo_gres_gpus(gres: str, gpus: int) -> None:
    assert _gres_gpus(gres) == gpus


def test_a_job_slurm_killed_is_recorded_failed_with_its_state(tmp_path: Path) -> None:
    write_results(tmp_path, {"status": "running", "norm": "gn", "output_dir": str(tmp_path)})
    result = record_lost_job(tmp_path, ["norm=gn"], "12_1", "CANCELLED")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == result
    assert saved["status"] == "failed" and saved["bad_input"] is False
    assert "SLURM job 12_1 ended CANCELLED" in saved["error"] and saved["norm"] == "gn"


def test_a_job_that_recorded_its_outcome_keeps_it(tmp_path: Path) -> None:
    write_results(tmp_path, {"status": "completed", "val_acc": 0.5})
    assert record_lost_job(tmp_path, [], "3", "FAILED")["status"] == "completed"


def test_a_job_killed_before_it_started_gets_a_results_file(tmp_path: Path) -> None:
    record_lost_job(tmp_path / "7", ["norm=bn"], "9_7", "NODE_FAIL")
    saved = json.loads((tmp_path / "7" / "results.json").read_text())
    assert saved["status"] == "failed" and saved["overrides"] == ["norm=bn"]
