"""run(cfg): one training job from a composed config to results.json.

The run folder is claimed through normlab.run_folder (its lock and the fingerprint of the run
it holds); the parts come from normlab.job.build.build_run; this module fits them and records the
outcome.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from normlab.console import print_config
from normlab.job.build import Run, build_run, run_axes
from normlab.job.callbacks import read_fit_summary
from normlab.job.spec import run_spec
from normlab.platform.environment import (
    check_devices,
    device_count,
    effective_strategy,
    job_overrides,
    process_rank,
    slurm_job_id,
    under_slurm,
)
from normlab.platform.runtime import configure_threads
from normlab.platform.wandb_logging import log_results_table
from normlab.results import RunResult, compared_metric, is_bad_input, redact, write_results
from normlab.run_folder import RunFolder, already_line, claimed, fingerprint
from normlab.stats.evaluate import domain_shift_accuracy


def run(cfg: DictConfig, output_dir: Path) -> RunResult:
    """Train and validate as `cfg` says; rank 0 always leaves results.json in `output_dir`.

    The folder is claimed first (normlab.run_folder): a folder that holds another run, or that
    another process runs in, is refused before anything in it is touched (RunFolderError, never
    recorded), and this same run already finished there is reported in one line and returned
    as its results.json says, the folder left as it is."""
    primary = process_rank() == 0
    with claimed(cfg, output_dir, primary) as done:
        if done is not None:
            if primary:
                print(already_line(output_dir, done))
            return done
        return train(cfg, output_dir, primary)


def train(cfg: DictConfig, output_dir: Path, primary: bool) -> RunResult:
    """The run itself, in a folder claimed for it: results.json says `running` from the start
    and records the outcome (a failure too, with error.log) when it ends."""
    start, cpu_start = time.time(), time.process_time()
    folder = RunFolder(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # recorded first, so that whatever raises below (a bad value included) has its record
    results: RunResult = {
        "status": "running",
        "output_dir": str(output_dir),
        "overrides": job_overrides(),
    }
    if under_slurm():
        results["slurm_job_id"] = slurm_job_id()
    if primary:
        folder.error_log.unlink(missing_ok=True)  # an earlier attempt's
        write_results(output_dir, results)
    parts: Run | None = None
    try:
        spec = run_spec(cfg)
        axes = run_axes(cfg, spec)
        results.update(axes, fingerprint=fingerprint(cfg).digest)
        if primary:
            write_results(output_dir, results)
        spawned = effective_strategy(cfg.trainer.get("strategy")) == "ddp_spawn"
        ranks = device_count(cfg.trainer) if spawned else 1  # spawned ranks share this job's cores
        results["threads"] = configure_threads(cfg.threads, ranks)
        check_devices(cfg.trainer)  # refused before the config is printed
        if primary and cfg.print_config:
            print_config(cfg)
        if primary:
            resolved = redact(OmegaConf.to_container(cfg, resolve=True))
            OmegaConf.save(OmegaConf.create(resolved), folder.config)
        parts = build_run(cfg, output_dir, verbose=primary, spec=spec, devices_checked=True)
        hparams = {
            "lr": spec.lr,
            "global_batch_size": spec.global_batch,
            "world_size": spec.world_size,
            **axes,
        }
        for logger in parts.loggers:
            logger.log_hyperparams(redact(hparams))
        if parts.ckpt_path and primary:
            print(f"normlab: resuming from {parts.ckpt_path}")
        parts.trainer.fit(
            parts.module, datamodule=parts.datamodule, ckpt_path=parts.ckpt_path, weights_only=True
        )
        if primary:
            results.update(fit_results(cfg, parts, output_dir))
    except Exception as error:
        results.update(status="failed", error=redact(f"{type(error).__name__}: {error}"))
        results["bad_input"] = is_bad_input(error)
        if primary:
            folder.error_log.write_text(redact(traceback.format_exc()))
        raise
    finally:
        if parts is not None:
            parts.close(failed=results["status"] == "failed")
        results["wall_s"] = round(time.time() - start + results.get("earlier_attempts_s", 0), 3)
        earlier_cpu = results.get("earlier_attempts_cpu_s", 0.0)
        results["cpu_s"] = (
            None if earlier_cpu is None else round(time.process_time() - cpu_start + earlier_cpu, 3)
        )
        if primary:
            write_results(output_dir, results)
    return results


def fit_results(cfg: DictConfig, parts: Run, output_dir: Path) -> RunResult:
    """What rank 0 records once fit returned: its summary, the status it implies, the run's
    derived values, diagnostics and the shifted-domain accuracy (also sent to W&B)."""
    summary, interrupted = read_fit_summary(RunFolder(output_dir).fit_summary)
    history = summary["history"]
    status = (
        "diverged"
        if summary["diverged"]
        else "interrupted"
        if interrupted
        else "debug"  # shrunk to check that it works (FitSummary says how): never a result
        if summary.get("debug")
        else "completed"
    )
    results: RunResult = {
        **summary,
        "status": status,
        "val_acc": _last(history, "val/acc"),
        "best_val_acc": max(_values(history, "val/acc"), default=None),
        "val_loss": _last(history, "val/loss"),
        "val_acc5": _last(history, "val/acc5"),
        "global_batch_size": parts.spec.global_batch,
        "virtual_devices": parts.spec.virtual_devices,
        "lr": parts.spec.lr,
        "world_size": parts.spec.world_size,
        "resumed_from": parts.ckpt_path,
        **({"resume_fallback": parts.resume_fallback} if parts.resume_fallback else {}),
        "num_params": sum(p.numel() for p in parts.model.parameters()),
    }
    compared = cfg.precise_bn.compare_samples
    if compared:
        results["precise_bn_compare"] = {
            str(int(n)): _last(history, compared_metric(int(n))) for n in compared
        }
    diagnostics = read_diagnostics(output_dir)
    if diagnostics:
        results["diagnostics"] = diagnostics
    if parts.target is not None and status == "completed":
        results["domain_shift"] = {
            "data": OmegaConf.to_container(cfg.precise_bn.data, resolve=True),
            **domain_shift_accuracy(
                parts.model,
                parts.target,
                int(cfg.precise_bn.target_samples),
                int(cfg.precise_bn.batch_size),
                int(cfg.seed),
                parts.module.device,
            ),
        }
    for logger in parts.loggers:
        if type(logger).__name__ == "WandbLogger":
            log_results_table(logger, results)
    return results


def _values(epochs: list[dict[str, float]], key: str) -> list[float]:
    return [e[key] for e in epochs if e.get(key) is not None]


def _last(epochs: list[dict[str, float]], key: str) -> float | None:
    values = _values(epochs, key)
    return values[-1] if values else None


def read_diagnostics(output_dir: Path) -> dict[str, Any]:
    """What the diagnostics monitor left in the run folder (it runs in the training process)."""
    path = RunFolder(output_dir).diagnostics
    return json.loads(path.read_text()) if path.exists() else {}
