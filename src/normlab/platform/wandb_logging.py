"""Weights & Biases as an optional sink: one run per job, resumed (never duplicated) after a
requeue, grouped per sweep; any W&B failure warns once and training goes on without it."""

from __future__ import annotations

import os
import secrets
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from normlab.platform.environment import job_overrides
from normlab.results import redact
from normlab.run_folder import RunFolder

_warned = False


def warn_once(message: str) -> None:
    """Print one 'normlab: warning:' line per process, however many times W&B fails."""
    global _warned
    if not _warned:
        print(
            f"normlab: warning: W&B disabled, training goes on without it: {message}",
            file=sys.stderr,
        )
        _warned = True


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as {'a.b.c': value}, secrets from the environment redacted."""
    container = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = value

    walk("", container)
    return redact(flat)


def run_id(output_dir: Path) -> str:
    """The W&B run id of this run folder: read from wandb_id.txt, else made and saved there."""
    path = RunFolder(output_dir).wandb_id
    if path.exists():
        return path.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits
    new_id = "".join(secrets.choice(alphabet) for _ in range(8))
    path.write_text(new_id + "\n")
    return new_id


def sweep_group(output_dir: Path, preset: str | None = None) -> str | None:
    """One group per sweep: the sweep folder's name in a multirun, after the preset's name
    when a paper preset made it (`gn_batch_size-<sweep>`); None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep = Path(HydraConfig.get().sweep.dir).name
        return f"{preset}-{sweep}" if preset else sweep
    return None


MAX_TAG = 64  # W&B refuses longer tags


def run_tags(cfg: DictConfig, overrides: list[str] | None = None) -> list[str]:
    """Tags from the run axes (norm, batch size, model, data, seed, the statistics settings)
    and every override of the job, so each swept axis can be filtered on."""
    tags = [
        f"norm={cfg.norm.name}",
        f"batch_size={cfg.batch_size}",
        f"model={cfg.model.name}",
        f"data={cfg.data.name}",
        f"seed={cfg.seed}",
        f"virtual_devices={cfg.virtual_devices}",
        f"momentum={cfg.norm.get('momentum')}",
        f"precise_bn.num_samples={cfg.precise_bn.num_samples}",
        f"frozen_bn.last_epochs={cfg.frozen_bn.last_epochs}",
        f"eval_stats={cfg.eval_stats}",
        f"eval_alpha={cfg.eval_alpha}",
    ]
    if cfg.get("preset"):
        tags.append(f"preset={cfg.preset}")
    tags += [o.lstrip("+~") for o in overrides or []]
    return list(dict.fromkeys(t[:MAX_TAG] for t in tags))


def wandb_mode(logger_cfg: DictConfig) -> str:
    """logger.mode if set, else WANDB_MODE, else online."""
    return str(logger_cfg.get("mode") or os.environ.get("WANDB_MODE") or "online")


def has_credentials() -> bool:
    """Whether an online run could log in (an API key in the environment or ~/.netrc)."""
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    )


def build_wandb_logger(cfg: DictConfig, output_dir: Path) -> Any | None:
    """A started WandbLogger writing under the run folder, or None (warned once) on any failure."""
    logger_cfg = cfg.logger
    mode = wandb_mode(logger_cfg)
    if mode == "disabled":
        return None
    if mode == "online" and not has_credentials():
        warn_once("no WANDB_API_KEY (or `wandb login`); set WANDB_MODE=offline to log locally")
        return None
    try:
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(
            project=logger_cfg.get("project") or "normlab",
            entity=logger_cfg.get("entity"),
            group=logger_cfg.get("group") or sweep_group(output_dir, cfg.get("preset")),
            tags=run_tags(cfg, job_overrides()),
            save_dir=str(output_dir),
            id=run_id(output_dir),
            resume="allow",
            mode=mode,
            config=flat_config(cfg),
            settings=wandb.Settings(init_timeout=float(logger_cfg.get("init_timeout", 30))),
        )
        _ = logger.experiment  # start now, so a failure is caught here and not mid-training
        return logger
    except Exception as error:  # noqa: BLE001 - any W&B failure must leave training running
        warn_once(f"{type(error).__name__}: {redact(str(error))}")
        return None


def log_results_table(logger: Any, results: Mapping[str, Any]) -> None:
    """The final results as a one-row W&B table and the run's summary. Failures only warn."""
    try:
        scalars = {
            k: v for k, v in results.items() if isinstance(v, int | float | str | bool) or v is None
        }
        columns = sorted(scalars)
        logger.log_table(key="results", columns=columns, data=[[scalars[c] for c in columns]])
        logger.experiment.summary.update(
            redact({k: v for k, v in scalars.items() if v is not None})
        )
    except Exception as error:  # noqa: BLE001
        warn_once(f"could not log the results table: {type(error).__name__}: {error}")


def finish(logger: Any, failed: bool = False) -> None:
    """End the W&B run, marked failed (exit code 1) when the job failed: called on every path,
    so a failed job of a multirun never leaves its run open for the next job to reuse."""
    try:
        if failed:
            logger.experiment.finish(exit_code=1)
        else:
            logger.experiment.finish()
    except Exception as error:  # noqa: BLE001
        warn_once(f"could not finish the W&B run: {type(error).__name__}: {error}")
