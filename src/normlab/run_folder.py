"""A run folder and the one run it holds: every file's name, the run's fingerprint and the
folder's lock.

`RunFolder(path)` names every file a run writes (results.json, config_resolved.yaml, error.log,
fingerprint.json, checkpoints/last.ckpt and best.ckpt, the fit summary, diagnostics, the W&B
id, the csv/ and tensorboard/ logger folders, eval/), so that training, resume, evaluation,
reports and scripts spell them in one place.

A run folder (`hydra.run.dir`, or a sweep's job folder) holds one run. When a run starts it
records `fingerprint.json`: the settings that define the run and their sha256. A command given
again into the folder resumes from checkpoints/last.ckpt, or reports the run already finished,
only when its own fingerprint is the same; a different run is refused with one line naming the
keys that differ, before anything in the folder is touched. `resume=false` is the way to
replace the folder's run: the earlier run's outputs are removed (PREVIOUS_RUN_OUTPUTS) and this
run starts from scratch.

The defining settings are the resolved config without OPERATIONAL_KEYS, the keys that only say
how a run executes, not what it computes:

- `resume`, `ckpt_path`: which checkpoint a run continues from;
- `published_records`: where a sweep looks for runs already published;
- `threads`, `print_config`: CPU threads, the console;
- `logger`: where metrics go (CSV, TensorBoard, W&B project, entity and mode);
- `callbacks`: the progress bar, which checkpoints are kept, and `callbacks.extra` (a test's
  signal sender, an extra monitor; a callback that changes training, such as EarlyStopping, is
  the caller's own responsibility);
- `debug.stop_after_epochs`: a simulated preemption, which the resumed run continues;
- `data.download`, `data.cache_dir`: how the data is fetched and cached, not which data;
- `trainer.log_every_n_steps`, `trainer.num_sanity_val_steps`, `trainer.enable_progress_bar`,
  `trainer.enable_model_summary`, `trainer.enable_checkpointing`, `trainer.profiler`: logging,
  checks before training (a resumed run repeats them), checkpoints and profiling;
- `hydra`: Hydra's own settings (folders, launcher), never part of a job's config anyway.

Everything else defines the run: a changed `trainer.max_epochs` is another run (the schedule
spans the epochs), so is `data.num_workers` (worker seeds change the augmentation).

Folders written before fingerprints (no fingerprint.json) are judged by their
config_resolved.yaml, the resolved config every run saves when it starts, with one leniency: a
key the old config lacks is not counted as a difference (normlab may have added it since). A
folder with neither file has nothing to compare against and is used as before.

One process per folder: a process holds the folder's lock file `.lock` with flock(2) for as long
as it runs there; the kernel drops the lock when the process ends, however it ends (kill -9
included), so no stale lock is left behind. A second process that meets the lock fails at
once, writing nothing. Processes forked by the holder (DataLoader workers with
data.num_workers > 0) share its lock until they exit. Within one process the lock is
re-entrant: train.py takes it before Hydra writes into the folder and normlab.train.run takes
it again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from normlab.results import RESULTS_FILE, RESULTS_MODE, RunResult, read_results, redact

FINGERPRINT_FILE = "fingerprint.json"
CONFIG_FILE = "config_resolved.yaml"  # the resolved config every run saves when it starts
LEGACY_CONFIG_FILE = CONFIG_FILE  # what a folder from before fingerprints is judged by
LOCK_FILE = ".lock"
ERROR_LOG = "error.log"  # the traceback of a failed run
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last"  # checkpoints/last.ckpt: rewritten after every epoch, for resume
BEST_CHECKPOINT = "best"  # checkpoints/best.ckpt: highest val/acc
CHECKPOINT_SUFFIX = ".ckpt"
FIT_SUMMARY_FILE = ".fit_summary.json"  # rank 0's hand-over at the end of fit, removed once read
PROFILER_NAME = "profile"  # Lightning's profilers write <stage>-profile.txt (fit-profile.txt)
DIAGNOSTICS_FILE = "diagnostics.json"
DIAGNOSTICS_PLOT = "diagnostics.png"
WANDB_ID_FILE = "wandb_id.txt"  # the W&B run id, so a resumed run continues its W&B run
CSV_DIR = "csv"  # CSVLogger: csv/metrics.csv (csv/resumed_<k>/ after a resume)
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval"  # eval.py's results for the folder's checkpoints
EVAL_FILE = "eval_results.json"  # eval/eval_results.json: one row per statistics choice
OPERATIONAL_KEYS = (
    "resume",
    "published_records",
    "ckpt_path",
    "threads",
    "print_config",
    "logger",
    "callbacks",
    "debug.stop_after_epochs",
    "data.download",
    "data.cache_dir",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.enable_checkpointing",
    "trainer.profiler",
    "hydra",
)
# Statuses of a run that is over: given again with the same settings it is reported, not rerun.
FINISHED = ("completed", "diverged")
# What an earlier run left in its folder that `resume=false` removes before starting afresh (the
# new run rewrites results.json, config_resolved.yaml and fingerprint.json). Kept: Hydra's
# .hydra/ and train.log (already this command's), and wandb/ (W&B's own store: offline runs may
# not be synced yet); wandb_id.txt goes, so the new run is a new W&B run.
PREVIOUS_RUN_OUTPUTS = (
    RESULTS_FILE,
    FINGERPRINT_FILE,
    CONFIG_FILE,
    CHECKPOINT_DIR,
    CSV_DIR,
    TENSORBOARD_DIR,
    WANDB_ID_FILE,
    DIAGNOSTICS_FILE,
    DIAGNOSTICS_PLOT,
    FIT_SUMMARY_FILE,
    f"fit-{PROFILER_NAME}.txt",
    EVAL_DIR,
    ERROR_LOG,
)
MAX_SHOWN = 6  # differing keys named in the refusal; the rest are counted

_held: dict[str, int] = {}  # lock file -> descriptor, for every folder this process holds


class RunFolderError(Exception):
    """A run folder this run may not use. Nothing was written into the folder: the error is
    one line for the user, never recorded in the folder's results.json."""


class FolderBusy(RunFolderError):
    """Another process is running in the folder."""


class FolderHoldsAnotherRun(RunFolderError):
    """The folder holds a run with other defining settings."""


@dataclass(frozen=True)
class Fingerprint:
    """The settings that define a run (nested as in the config) and where they were read."""

    settings: dict[str, Any]
    source: str = "this run's config"

    @property
    def digest(self) -> str:
        """sha256 of the settings as canonical JSON: equal exactly when the settings are."""
        return hashlib.sha256(_canonical(self.settings).encode()).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def defining_settings(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a resolved config as plain containers) without OPERATIONAL_KEYS, secrets
    redacted as in config_resolved.yaml: what makes two runs the same run."""
    settings = json.loads(_canonical(redact(config)))  # a deep copy in JSON's types
    for key in OPERATIONAL_KEYS:
        *parents, leaf = key.split(".")
        node: Any = settings
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return settings


def fingerprint(cfg: DictConfig) -> Fingerprint:
    """The fingerprint of the run `cfg` describes."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return Fingerprint(defining_settings({str(k): v for k, v in container.items()}))


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim.lr': 0.1, ...}: nested settings by dotted key (lists are values)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


_UNSET = object()


def differences(
    old: dict[str, Any], new: dict[str, Any], ignore_added: bool = False
) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every dotted key whose value differs (_UNSET where a
    side lacks it); `ignore_added` skips keys only `new` has."""
    a, b = flatten(old), flatten(new)
    found = []
    for key in dict.fromkeys([*a, *b]):
        before, after = a.get(key, _UNSET), b.get(key, _UNSET)
        if before is _UNSET and ignore_added:
            continue
        if before is _UNSET or after is _UNSET or _canonical(before) != _canonical(after):
            found.append((key, before, after))
    return found


def _show(value: Any) -> str:
    if value is _UNSET:
        return "(unset)"
    return value if isinstance(value, str) else _canonical(value)


def describe_differences(found: list[tuple[str, Any, Any]]) -> str:
    """'seed: 0 -> 1, optim.lr: 0.1 -> 0.05' (the first MAX_SHOWN, then how many more)."""
    shown = [f"{key}: {_show(a)} -> {_show(b)}" for key, a, b in found[:MAX_SHOWN]]
    if len(found) > MAX_SHOWN:
        shown.append(f"and {len(found) - MAX_SHOWN} more")
    return ", ".join(shown)


@dataclass(frozen=True)
class RunFolder:
    """One run folder: where each of its files lies, the fingerprint of the run it holds, its
    results, and its lock."""

    path: Path

    @property
    def results(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def fingerprint_file(self) -> Path:
        return self.path / FINGERPRINT_FILE

    @property
    def error_log(self) -> Path:
        return self.path / ERROR_LOG

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def checkpoint(self, name: str) -> Path:
        """checkpoints/<name>.ckpt (`name`: LAST_CHECKPOINT, BEST_CHECKPOINT, ...)."""
        return self.checkpoints / f"{name}{CHECKPOINT_SUFFIX}"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint(LAST_CHECKPOINT)

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint(BEST_CHECKPOINT)

    @property
    def fit_summary(self) -> Path:
        return self.path / FIT_SUMMARY_FILE

    @property
    def diagnostics(self) -> Path:
        return self.path / DIAGNOSTICS_FILE

    @property
    def diagnostics_plot(self) -> Path:
        return self.path / DIAGNOSTICS_PLOT

    @property
    def wandb_id(self) -> Path:
        return self.path / WANDB_ID_FILE

    @property
    def csv(self) -> Path:
        return self.path / CSV_DIR

    @property
    def metrics_csv(self) -> Path:
        """The first attempt's metrics (csv/metrics.csv); a resume adds csv/resumed_<k>/."""
        return self.csv / "metrics.csv"

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    @property
    def eval_results(self) -> Path:
        return self.eval_dir / EVAL_FILE

    @property
    def lock_file(self) -> Path:
        """The file whose flock(2) marks the folder as taken (`.lock`)."""
        return self.path / LOCK_FILE

    def _key(self) -> str:
        return str(self.lock_file.resolve())

    def lock(self, create: bool = True) -> bool:
        """Take the folder's lock for this process, without waiting; raise FolderBusy when
        another process holds it. Returns whether this call took it (False: this process held
        it already, or `create` is false and there is no lock file to take), so that only the
        call that took it releases it. `create=False` writes nothing into the folder."""
        key = self._key()
        if key in _held or not (create or self.lock_file.is_file()):
            return False
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.lock_file, os.O_RDONLY | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:  # removed since it was seen: nobody holds it
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(
                f"another process is running in {self.path} (it holds {self.lock_file}); wait "
                "for it to end, or give this run another folder (hydra.run.dir=<folder>)"
            ) from None
        _held[key] = fd
        return True

    def unlock(self) -> None:
        """Release this process's lock on the folder (closing the descriptor drops flock)."""
        fd = _held.pop(self._key(), None)
        if fd is not None:
            os.close(fd)

    @contextmanager
    def locked(self, create: bool = True) -> Iterator[None]:
        """Hold the lock (see `lock`) for the block; released after it if this took it."""
        took = self.lock(create)
        try:
            yield
        finally:
            if took:
                self.unlock()

    def recorded(self) -> Fingerprint | None:
        """The fingerprint of the run the folder holds: its fingerprint.json, else (a folder
        from before fingerprints) its config_resolved.yaml, else None (nothing to compare)."""
        path = self.fingerprint_file
        if path.is_file():
            try:
                return Fingerprint(json.loads(path.read_text())["settings"], FINGERPRINT_FILE)
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable: fall back to the config the run saved
        legacy = self.config
        if not legacy.is_file():
            return None
        try:
            container = OmegaConf.to_container(OmegaConf.load(legacy), resolve=False)
        except (OSError, ValueError, yaml.YAMLError):
            return None  # unreadable: nothing to compare against
        if not isinstance(container, dict):
            return None
        settings = defining_settings({str(k): v for k, v in container.items()})
        return Fingerprint(settings, LEGACY_CONFIG_FILE)

    def same_run(self, new: Fingerprint, resume: bool = True) -> bool | None:
        """Whether the folder holds the run `new` describes: True, None when it records no run,
        False for another run given `resume=false` (to be replaced); another run otherwise is
        refused with FolderHoldsAnotherRun, naming the keys that differ and the ways out."""
        old = self.recorded()
        if old is None:
            return None
        found = differences(old.settings, new.settings, old.source == LEGACY_CONFIG_FILE)
        if not found:
            return True
        if not resume:
            return False
        raise FolderHoldsAnotherRun(
            f"{self.path} holds another run ({describe_differences(found)}; from its "
            f"{old.source}); to replace that run with this one give resume=false, or give "
            "this run another folder (hydra.run.dir=<folder>; a sweep: hydra.sweep.dir=<folder>)"
        )

    def finished(self) -> RunResult | None:
        """The folder's results.json when its run is over (FINISHED), else None."""
        try:
            results = read_results(self.path)
        except (OSError, ValueError):
            return None
        return results if results.get("status") in FINISHED else None

    def finished_run(self, new: Fingerprint, resume: bool = True) -> RunResult | None:
        """The results of this very run when the folder holds it finished and `resume` is on
        (reported, not rerun); None when the run is to start or continue here. Reads only;
        another run is refused as `same_run` says."""
        same = self.same_run(new, resume)
        return self.finished() if same and resume else None

    def record(self, new: Fingerprint) -> Path:
        """Write fingerprint.json (the settings, their sha256, the keys left out), atomically."""
        record = {
            "sha256": new.digest,
            "settings": new.settings,
            "operational_keys_left_out": list(OPERATIONAL_KEYS),
        }
        path = self.fingerprint_file
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".fingerprint-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, RESULTS_MODE)
        os.replace(tmp, path)
        return path

    def clear_previous_run(self) -> None:
        """Remove what an earlier run left (PREVIOUS_RUN_OUTPUTS), so that a run started afresh
        here (`resume=false`) is the only run its folder speaks of."""
        for name in PREVIOUS_RUN_OUTPUTS:
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


@contextmanager
def claimed(cfg: DictConfig, output_dir: Path, primary: bool = True) -> Iterator[RunResult | None]:
    """Hold `output_dir` for the run `cfg` describes, for the block: yields the results of this
    same run when the folder already holds it finished (nothing written, the lock taken only if
    the folder has a lock file), else None once the lock is held and fingerprint.json recorded
    (after removing an earlier run's outputs under `resume=false`, unless ckpt_path names the
    checkpoint to start from). Raises FolderBusy or FolderHoldsAnotherRun before writing
    anything. Other ranks (`primary` false) only check: rank 0 locks and records."""
    folder = RunFolder(output_dir)
    new = fingerprint(cfg)
    resume = bool(cfg.resume)
    with folder.locked(create=False) if primary else nullcontext():
        done = folder.finished_run(new, resume)
        if done is not None or not primary:
            yield done
            return
        with folder.locked(create=True):
            if not resume and not cfg.get("ckpt_path"):
                folder.clear_previous_run()
            folder.record(new)
            yield None


def already_line(output_dir: Path, results: RunResult) -> str:
    """The one line that reports a finished run given again (and left as it is)."""
    return (
        f"normlab: already {results.get('status')}: {Path(output_dir) / RESULTS_FILE} holds this "
        "run (the same settings) and is left as it is; resume=false runs it again from the start"
    )


def preflight_claim(cfg: DictConfig, output_dir: Path) -> RunResult | None:
    """train.py's check before Hydra writes .hydra/ and train.log into a named run folder: the
    lock, taken for the rest of this process (normlab.train.run takes it again), and the
    fingerprint. Returns the results of this same run when it already finished there (the
    folder untouched); raises as `claimed` does."""
    folder = RunFolder(output_dir)
    folder.lock(create=False)
    done = folder.finished_run(fingerprint(cfg), bool(cfg.resume))
    if done is None:
        folder.lock(create=True)
    return done
