"""results.json: the one file every run writes and every report reads.

RunResult lists its fields once: normlab.train fills it, write_results refuses any other
field, the sweep report's columns are the fields marked Column (in their order here), and the
tests check a run's file against it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import traceback
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict, TypeVar, get_args, get_type_hints

RESULTS_FILE = "results.json"
RESULTS_MODE = 0o644  # readable by the group and others, like every other output of a run

# "debug": a run shrunk to check that it works (debug=fdr|limit|overfit|profiler, the Trainer's
# fast_dev_run, overfit_batches or limit_train_batches): never averaged into a report
Status = Literal["running", "completed", "diverged", "failed", "interrupted", "debug"]
STATUSES: tuple[str, ...] = get_args(Status)

T = TypeVar("T")
COLUMN = "a column of the sweep report"
SOMETIMES = "only in some finished runs"
# Exceptions that mean the job's own input is wrong when normlab's own checks raise them: one
# line, no traceback, not retried (is_bad_input).
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, TypeError)
_OWN_CODE = (
    Path(__file__).resolve().parent,
    Path(__file__).resolve().parent.parent / "hydra_plugins",
)


def is_bad_input(error: BaseException) -> bool:
    """Whether `error` is one of normlab's own input checks (a USER_ERRORS exception raised in
    normlab's code): the run's input is wrong and rerunning it cannot help. The same exception
    types raised inside a library (a logger, torch) are failures to retry, not bad input."""
    if not isinstance(error, USER_ERRORS):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return True  # raised and recorded without a traceback: by normlab's own code
    origin = Path(frames[-1].filename).resolve()
    return any(origin.is_relative_to(root) for root in _OWN_CODE)


Column = Annotated[T, COLUMN]  # normlab.reporting.report.COLUMNS, in the order of RunResult
Sometimes = Annotated[T, SOMETIMES]  # absent from a finished run unless it applies


class RunResult(TypedDict, total=False):
    """A run's results.json. A running job's file holds the axes, status and output_dir; a
    finished one every field but the Sometimes ones that do not apply; NaN is written null."""

    # the hyper-parameters a sweep varies (normlab.job.build.run_axes)
    norm: Column[str]
    norm_params: dict[str, Any]
    batch_size: Column[int]  # per device
    virtual_devices: Column[int]
    global_batch_size: Column[int]  # batch_size x virtual_devices x world_size x accumulation
    model: Column[str]
    data: Column[str]
    seed: Column[int]
    momentum: Column[float | None]  # the norm's, None for a norm without one
    norm_weight_decay: str  # optim.norm_weight_decay: false, true or toward_one
    base_lr: float  # optim.lr: the rate at optim.ref_batch_size, before the scaling rule
    preset: Column[str | None]  # conf/experiment/<preset>.yaml that set this job, if any
    overrides: list[str]  # the job's command-line overrides (a re-run sweep checks them)
    devices: int | str  # trainer.devices as given
    precision: Column[str]  # trainer.precision: 32-true, bf16-mixed, 16-mixed, ...
    max_epochs: int | None  # trainer.max_epochs: the budget (epochs: how many it trained)
    memory_format: Column[str]  # channels_last or contiguous (model.channels_last)
    provenance: dict[str, Any]  # normlab.platform.provenance.Provenance: code, torch, device
    # the job
    status: Column[Status]
    debug: Sometimes[str]  # what made it a debug run: 'debug=limit, trainer.limit_train_batches=3'
    error: Sometimes[str]  # 'failed': '<ExceptionType>: <message>'
    bad_input: Sometimes[bool]  # 'failed' on a user error (a re-run sweep does not retry it)
    output_dir: str
    threads: int
    # what training measured
    val_acc: Column[float | None]  # after the last epoch
    best_val_acc: Column[float | None]
    val_loss: Column[float | None]
    train_loss: Column[float | None]  # mean of the last epoch
    epochs: Column[int]
    steps: Column[int]
    wall_s: Column[float]  # the whole job, construction and earlier attempts included
    attempts: int  # 1, plus one per requeue or re-run this job resumed through
    earlier_attempts_s: float  # earlier attempts' time up to the checkpoint resumed from
    # CPU seconds of the process that wrote this record (rank 0; all its threads, not data
    # loader workers), earlier attempts included; None where an earlier attempt did not count it
    cpu_s: float | None
    earlier_attempts_cpu_s: float | None  # earlier attempts' CPU time (None: not counted)
    slurm_job_id: Sometimes[str]  # a job SLURM ran: its id (array jobs: <array>_<task>)
    train_images_per_s: Column[float | None]
    val_acc5: float | None  # above 10 classes
    diverged: bool
    divergence_reason: str | None
    history: list[dict[str, float]]  # validation metrics of every epoch
    num_params: int
    lr: float  # the effective rate after the linear scaling rule
    world_size: int
    resumed_from: str | None  # the checkpoint this job continued from
    resume_fallback: Sometimes[str]  # last.ckpt could not be read: what was resumed instead
    fingerprint: str  # sha256 of the run's defining settings (normlab.run_folder)
    published_from: Sometimes[str]  # a sweep job not run again: the committed record it copies
    # population statistics
    precise_bn_samples: Column[int]
    frozen_bn_last_epochs: Column[int]
    eval_stats: Column[str]
    eval_alpha: Column[float]
    diagnostics: Sometimes[dict[str, Any]]  # diagnostics.every_n_epochs > 0
    domain_shift: Sometimes[dict[str, Any]]  # precise_bn.data set, completed runs
    # precise_bn.compare_samples set: final accuracy with PreciseBN over N samples, keyed "N"
    precise_bn_compare: Sometimes[dict[str, float | None]]


COMPARED_METRIC = "val/acc_precise_bn_{}"  # history key of precise_bn.compare_samples' N


def compared_metric(num_samples: int) -> str:
    """The history key of the accuracy with PreciseBN over `num_samples` samples, which a run
    with precise_bn.compare_samples records beside its own val/acc."""
    return COMPARED_METRIC.format(int(num_samples))


def _fields(marker: str | None = None) -> tuple[str, ...]:
    hints = get_type_hints(RunResult, include_extras=True)
    return tuple(
        name
        for name, hint in hints.items()
        if marker is None or marker in getattr(hint, "__metadata__", ())
    )


RESULT_FIELDS = _fields()
COLUMN_FIELDS = _fields(COLUMN)
SOMETIMES_FIELDS = _fields(SOMETIMES)

SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
REDACTED = "<redacted>"


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (…_KEY, …_TOKEN, …SECRET…).

    Values shorter than 6 characters are ignored (too likely to match ordinary text).
    """
    env = os.environ if environ is None else environ
    values = {
        v for k, v in env.items() if any(m in k.upper() for m in SECRET_MARKERS) and len(v) >= 6
    }
    return sorted(values, key=len, reverse=True)


def redact(value: Any, secrets: list[str] | None = None) -> Any:
    """`value` (str, dict, list) with every secret environment value replaced by <redacted>."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_results(output_dir: Path, results: RunResult) -> Path:
    """Write results.json atomically (temp file + rename) so readers never see half a file."""
    if results.get("status") not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {results.get('status')!r}")
    unknown = sorted(set(results) - set(RESULT_FIELDS))
    if unknown:
        raise ValueError(f"results.json has no field {', '.join(unknown)} (see RunResult)")
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / RESULTS_FILE
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=".results-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(redact(_clean(results)), handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, RESULTS_MODE)  # mkstemp makes it owner-only; collaborators read sweeps
    os.replace(tmp, path)
    return path


def read_results(output_dir: Path) -> RunResult:
    """The results.json of a run folder."""
    return json.loads((Path(output_dir) / RESULTS_FILE).read_text())


NUMERIC_FIELDS = ("val_acc", "best_val_acc", "val_loss", "train_loss", "epochs", "steps",
                  "wall_s", "train_images_per_s", "batch_size", "seed")  # fmt: skip


class MalformedResults(ValueError):
    """A results.json that is not a run's record (not JSON, not an object, wrong types)."""


def load_record(path: Path) -> RunResult:
    """One results.json, checked enough for reports to trust it: a JSON object whose status
    is one of STATUSES and whose numeric fields are numbers or null; else MalformedResults
    naming the file and what is wrong."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise MalformedResults(f"{path} cannot be read as JSON ({type(error).__name__})") from None
    if not isinstance(record, dict):
        raise MalformedResults(f"{path} holds {type(record).__name__}, not a run's record")
    status = record.get("status")
    if status not in STATUSES:
        raise MalformedResults(f"{path} has status {status!r}; expected one of {STATUSES}")
    for key in NUMERIC_FIELDS:
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise MalformedResults(f"{path} has {key}={value!r}, not a number")
    return record  # type: ignore[return-value]


def finished_result(output_dir: Path, overrides: list[str] | None) -> RunResult | None:
    """The results.json of a job that a re-run sweep must not run again: completed, diverged,
    or failed on bad input (running, interrupted and other failures run again, resuming from
    checkpoints/last.ckpt). A folder that holds a different job is refused: Hydra numbers a
    sweep's jobs in order, so a changed grid would pair results with the wrong settings.
    `overrides` None: the folder's fingerprint already matched (normlab.run_folder), so the
    recorded overrides are not compared (they may differ in keys that only say how it runs)."""
    path = Path(output_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        prior = read_results(output_dir)
    except ValueError:
        return None
    recorded = prior.get("overrides")
    if recorded is not None and overrides is not None and sorted(recorded) != sorted(overrides):
        raise ValueError(
            f"{output_dir} holds another job ({' '.join(recorded)}), not this one "
            f"({' '.join(overrides)}); re-run the same sweep command into this folder, or give a "
            "new hydra.sweep.dir"
        )
    status = prior.get("status")
    if status in ("completed", "diverged") or (status == "failed" and prior.get("bad_input")):
        return prior
    return None
