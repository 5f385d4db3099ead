"""Evaluate a trained checkpoint under every way of getting population statistics.

Rethinking BN's view: the population statistics are a phase of their own, after SGD. One
checkpoint is evaluated with its EMA buffers, with PreciseBN statistics over several sample
counts, with each evaluation batch's own statistics at several batch sizes, with
example-weighed inference (alpha), and on a shifted domain with the source and re-estimated
statistics; one row per choice, all from the same weights.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from normlab.job.checkpoint_io import load_failure
from normlab.job.experiment import Experiment, build_experiment, build_target_domain
from normlab.norms.population import population_layers, state_guard
from normlab.results import redact
from normlab.run_folder import (
    CHECKPOINT_DIR,
    CHECKPOINT_SUFFIX,
    CONFIG_FILE,
    EVAL_FILE,
    LAST_CHECKPOINT,
    RunFolder,
)
from normlab.stats.callbacks import set_eval_alpha, training_loader
from normlab.stats.evaluate import (
    accuracy_with_batch_stats,
    domain_shift_accuracy,
    evaluate_accuracy,
)
from normlab.stats.precise_bn import update_population_stats


@dataclass
class EvalChoices:
    """What to evaluate: PreciseBN sample counts, batch sizes for batch statistics at inference,
    example-weighing alphas, and a corruption for the shifted domain ('' for none)."""

    precise_bn_samples: list[int] = field(default_factory=lambda: [1000, 10000])
    batch_sizes: list[int] = field(default_factory=list)  # empty: the run's batch_size
    alphas: list[float] = field(default_factory=lambda: [0.1, 0.25])
    corruption: str = ""
    shift_samples: int = 10000


def run_folder_config(ckpt_path: Path) -> tuple[Path, DictConfig]:
    """The run folder of a checkpoint (<run>/checkpoints/<name>.ckpt) and its resolved config."""
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    run_dir = ckpt_path.resolve().parent.parent
    config = RunFolder(run_dir).config
    if not config.is_file():
        raise FileNotFoundError(
            f"{config} not found: eval.py evaluates checkpoints of normlab run folders "
            f"(<run>/{CHECKPOINT_DIR}/*{CHECKPOINT_SUFFIX} beside <run>/{CONFIG_FILE})"
        )
    return run_dir, OmegaConf.load(config)  # type: ignore[return-value]


def load_weights(ckpt_path: Path) -> dict[str, torch.Tensor]:
    """The trained weights and buffers in a normlab checkpoint, or a ValueError naming a file
    that is none (truncated, not a torch file, not a Lightning checkpoint)."""
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for files it cannot read
        if "weights_only" in str(error) or "Weights only load failed" in str(error):
            reason = "it holds objects other than tensors"
        else:
            reason = load_failure(ckpt_path, error)
        raise ValueError(
            f"ckpt_path={ckpt_path} is not a readable normlab checkpoint ({reason})"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(
            f"ckpt_path={ckpt_path} is not a normlab checkpoint (no state_dict); give a "
            "<run>/checkpoints/*.ckpt file that train.py wrote"
        )
    return checkpoint["state_dict"]


ACCELERATORS = ("cpu", "gpu")
_ABSENT = object()


def apply_overrides(cfg: DictConfig, overrides: dict[str, Any], source: Path) -> DictConfig:
    """The run's config with `overrides` ({'data.root': '/elsewhere', ...}) set; a key the
    run's config does not have is refused in one line naming the keys beside it."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for key, value in overrides.items():
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            parent, _, _ = key.rpartition(".")
            node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
            names = (
                [f"{parent}.{k}" if parent else str(k) for k in node]
                if isinstance(node, DictConfig)
                else []
            )
            near = ", ".join(names) or "none"
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(
                f"{key} is no key of the run's config ({source}){hint}; keys there: {near}"
            )
        OmegaConf.update(cfg, key, value, merge=True)
    return cfg


def eval_config(cfg: DictConfig, accelerator: str | None = None) -> DictConfig:
    """The run's config, resolved, on one device of `accelerator` (cpu or gpu; None: the run's
    GPU if it used one and it is still there, else the CPU). Nothing else changes: evaluation
    builds only the experiment (normlab.job.experiment), never the run's Trainer or loggers."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("trainer=gpu: this machine has no CUDA GPU; give trainer=cpu")
    if accelerator is None:
        accelerator = cfg.trainer.get("accelerator")
    gpu = accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    cfg.trainer = {"accelerator": "gpu" if gpu else "cpu", "devices": 1}
    return cfg


def load_experiment(
    ckpt_path: Path, overrides: dict[str, Any] | None = None
) -> tuple[Path, DictConfig, Experiment]:
    """A checkpoint's run folder, its config (with `overrides`: `data.root`, ...; `trainer`:
    cpu or gpu) and its experiment with the checkpoint's weights, on the device chosen."""
    state = load_weights(ckpt_path)  # before config, data and model: a bad file fails at once
    run_dir, saved_cfg = run_folder_config(ckpt_path)
    overrides = dict(overrides or {})
    accelerator = overrides.pop("trainer", None)
    if accelerator is not None and accelerator not in ACCELERATORS:
        raise ValueError(f"trainer={accelerator}: valid choices: {', '.join(ACCELERATORS)}")
    saved_cfg = apply_overrides(saved_cfg, overrides, RunFolder(run_dir).config)
    cfg = eval_config(saved_cfg, accelerator)
    experiment = build_experiment(cfg)
    experiment.module.load_state_dict(state)
    experiment.model.to(eval_device(cfg.trainer))
    return run_dir, cfg, experiment


def eval_device(trainer_cfg: DictConfig) -> torch.device:
    """The device eval_config chose."""
    return torch.device("cuda" if trainer_cfg.accelerator == "gpu" else "cpu")


def evaluate_checkpoint(
    ckpt_path: Path,
    choices: EvalChoices,
    out_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every choice's validation accuracy for one checkpoint; written to <run>/eval/.
    `overrides` change the run's own config first (`data.root`, `data.val_samples`, ...;
    `trainer`: cpu or gpu), so a run folder can be evaluated on another machine."""
    given = {"overrides": dict(overrides)} if overrides else {}
    run_dir, cfg, experiment = load_experiment(ckpt_path, overrides)
    out_dir = out_dir or RunFolder(run_dir).eval_dir
    rows = _evaluate(cfg, experiment, eval_device(cfg.trainer), choices)
    axes = _run_axes(run_dir)
    rows = [{**axes, "checkpoint": str(ckpt_path), **given, **row} for row in rows]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / EVAL_FILE).write_text(json.dumps(redact(rows), indent=1) + "\n")
    return rows


def sweep_checkpoints(sweep: Path) -> list[Path]:
    """The last checkpoint of every run below a sweep folder, in folder order."""
    last = f"{CHECKPOINT_DIR}/{LAST_CHECKPOINT}{CHECKPOINT_SUFFIX}"
    found = sorted(Path(sweep).rglob(last))
    if not found:
        raise FileNotFoundError(f"sweep={sweep}: no <run>/{last} below it")
    return found


def evaluate_sweep(
    sweep: Path, choices: EvalChoices, overrides: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """evaluate_checkpoint for every run of a sweep folder: one row per run and choice, each
    with its run folder (`run`) and axes, ordered by the axes the sweep varied."""
    rows = []
    for ckpt in sweep_checkpoints(sweep):
        run = str(ckpt.parent.parent.relative_to(sweep))
        rows += [{"run": run, **row} for row in evaluate_checkpoint(ckpt, choices, None, overrides)]
    axes = varied_run_axes(rows)
    rows.sort(key=lambda row: tuple(str(row.get(axis)) for axis in axes))
    return rows


def varied_run_axes(rows: list[dict[str, Any]]) -> list[str]:
    """The run axes (RUN_AXES) whose value differs between rows, in that order."""
    return [a for a in RUN_AXES if len({str(row.get(a)) for row in rows}) > 1]


RUN_AXES = ("norm", "batch_size", "virtual_devices", "model", "data", "preset", "seed")


def _run_axes(run_dir: Path) -> dict[str, Any]:
    path = RunFolder(run_dir).results
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())
    return {k: results.get(k) for k in RUN_AXES}


def _evaluate(
    cfg: DictConfig, experiment: Experiment, device: torch.device, choices: EvalChoices
) -> list[dict[str, Any]]:
    datamodule, model = experiment.datamodule, experiment.model
    val = list(datamodule.val_dataloader())
    layers = population_layers(model)
    rows: list[dict[str, Any]] = [
        {"statistics": "ema", "val_acc": evaluate_accuracy(model, val, device)}
    ]
    if not layers:
        return rows  # a batch-independent norm: every other choice is the same network
    available = len(datamodule.train_set)
    with state_guard(model, state_dict=True) as saved:
        for samples in choices.precise_bn_samples:
            count = min(int(samples), available)
            loader = training_loader(datamodule, int(cfg.precise_bn.batch_size), int(cfg.seed))
            update_population_stats(model, loader, count)
            rows.append(
                {
                    "statistics": "precise_bn",
                    "samples": count,
                    "val_acc": evaluate_accuracy(model, val, device),
                }
            )
            saved.restore()  # each estimate starts from the checkpoint's own statistics
    for batch_size in choices.batch_sizes or [int(cfg.batch_size)]:
        batches = list(datamodule.eval_dataloader(int(batch_size)))
        rows.append({"statistics": "batch", "eval_batch_size": int(batch_size),
                     "val_acc": accuracy_with_batch_stats(model, batches, device)})  # fmt: skip
    capable = [layer for layer in layers if layer.supports_eval_alpha]
    if capable:
        for alpha in choices.alphas:
            for layer in capable:
                set_eval_alpha(layer, float(alpha))
            rows.append(
                {
                    "statistics": "ema",
                    "eval_alpha": float(alpha),
                    "val_acc": evaluate_accuracy(model, val, device),
                }
            )
            for layer in capable:
                set_eval_alpha(layer, 0.0)
    if choices.corruption:
        shifted = OmegaConf.merge(cfg.precise_bn, {"data": {"corruption": choices.corruption}})
        target = build_target_domain(cfg.data, shifted, int(cfg.seed), datamodule)
        assert target is not None
        shift = domain_shift_accuracy(
            model,
            target,
            choices.shift_samples,
            int(cfg.precise_bn.batch_size),
            int(cfg.seed),
            device,
        )
        rows.append(
            {
                "statistics": "ema",
                "domain": choices.corruption,
                "val_acc": shift["target_acc_source_stats"],
            }
        )
        rows.append({"statistics": "re-estimated", "domain": choices.corruption,
                     "samples": shift["target_stat_samples"], "val_acc": shift["target_acc_target_stats"]})  # fmt: skip
    return rows


def format_rows(rows: list[dict[str, Any]], axes: list[str] | None = None) -> str:
    """The rows as an aligned text table (run and axis columns when given, choice columns,
    accuracy in %)."""
    keys = ["statistics", "samples", "eval_batch_size", "eval_alpha", "domain"]
    lead = ["run", *(axes or [])] if axes is not None else []
    widths = {k: max(len(k), *(len(str(row.get(k, ""))) for row in rows)) + 2 for k in lead}
    head = "".join(f"{k:<{widths[k]}}" for k in lead)
    lines = [
        head
        + f"{'statistics':<14}{'samples':>9}{'eval batch':>11}{'alpha':>7}  {'domain':<16}{'val acc %':>10}"
    ]
    for row in rows:
        cells = [str(row.get(k, "")) if row.get(k) is not None else "" for k in keys]
        lines.append(
            "".join(f"{str(row.get(k, '')):<{widths[k]}}" for k in lead)
            + f"{cells[0]:<14}{cells[1]:>9}{cells[2]:>11}{cells[3]:>7}  {cells[4]:<16}{100 * row['val_acc']:>10.2f}"
        )
    return "\n".join(lines)
