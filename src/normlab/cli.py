"""The command line around Hydra: early checks of config-group choices, one-line errors,
failed jobs recorded without stopping a sweep, run folders claimed (normlab.run_folder)."""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from normlab.console import error_line
from normlab.platform.sweep import note_job, summary_line
from normlab.reporting.run_records import RUN_KEY, published_record
from normlab.results import RunResult, finished_result, is_bad_input, write_results
from normlab.run_folder import (
    Fingerprint,
    FolderHoldsAnotherRun,
    RunFolder,
    RunFolderError,
    already_line,
    fingerprint,
    preflight_claim,
)


def quiet_hydra_warnings() -> None:
    """conf/hydra/launcher/submitit_local.yaml deliberately refines the plugin's schema of the
    same name (so `hydra/launcher=submitit_local` keeps working); Hydra warns about that
    automatic schema match on every load, which is noise here."""
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")


def group_choices(conf_dir: Path, group: str) -> list[str] | None:
    """The options of config group `group` (a folder of conf/), or None if it is no group. A file
    whose name starts with _ is a base the options build on (conf/trainer/_base.yaml), no option."""
    folder = conf_dir / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


def check_group_overrides(args: Sequence[str], conf_dir: Path) -> str | None:
    """The one-line error for the first `group=option` naming an option that does not exist."""
    flags, overrides = split_hydra_args(args)
    if flags & HYDRA_OWN_FLAGS:
        return None
    for arg in overrides:
        if "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra/") or "(" in value or not value or value == "null":
            continue
        choices = group_choices(conf_dir, key)
        if choices is None:
            continue
        for option in value.split(","):
            if option not in choices:
                return error_line(f"unknown {key} '{option}'; valid choices: {', '.join(choices)}")
    return None


# Hydra's own command-line flags (hydra._internal.utils.get_args_parser), in three kinds.
# Flags after which preflight judges nothing and Hydra answers alone: help, version, shell
# completion (`-sc install=bash`, `-sc query=bash`: those "overrides" are commands, and tab
# completion composes partial words such as `norm=p`), another config than conf/train.yaml.
HYDRA_OWN_FLAGS = frozenset(
    ("--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc", "--config-path",
     "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun")
)  # fmt: skip
# Flags that print the config or Hydra's view of it instead of running: group options are
# still checked (a wrong one is one line), keys and values are left to Hydra.
HYDRA_SHOW_FLAGS = frozenset(("--cfg", "-c", "--package", "-p", "--info", "-i", "--resolve"))
# Flags followed by a value of their own, which is no override (`--cfg job`, `-p trainer`).
_VALUE_FLAGS = frozenset(
    ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
     "--config-dir", "-cd", "--experimental-rerun")
)  # fmt: skip
_INFO_CHOICES = frozenset(("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"))
_LONG_FLAGS = sorted(f for f in HYDRA_OWN_FLAGS | HYDRA_SHOW_FLAGS if f.startswith("--"))


def _flag_name(arg: str) -> str:
    """`--cfg=job` -> `--cfg`; an abbreviated long flag (argparse takes `--hydra-h`) -> its
    full name."""
    name = arg.split("=", 1)[0]
    if name.startswith("--") and name not in _LONG_FLAGS:
        matches = [f for f in _LONG_FLAGS if f.startswith(name)]
        if len(matches) == 1:
            return matches[0]
    return name


def split_hydra_args(args: Sequence[str]) -> tuple[set[str], list[str]]:
    """(the names of Hydra's flags given, the overrides): a flag's own value (`--cfg job`,
    `--info defaults`) is no override."""
    flags: set[str] = set()
    overrides: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        i += 1
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        name = _flag_name(arg)
        flags.add(name)
        if "=" in arg:
            continue
        takes_value = name in _VALUE_FLAGS or (
            name in ("--info", "-i") and i < len(items) and items[i] in _INFO_CHOICES
        )
        if takes_value and i < len(items):
            i += 1
    return flags, overrides


def _parse(overrides: list[str]) -> tuple[list[str], dict[str, list[object]]]:
    """(overrides with each sweep replaced by its first value, key -> every value of a sweep).

    One compose of the first values checks every key and value as a job will; the other values
    of each sweep are then checked on that config. Interval and glob sweeps are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    single: list[str] = []
    sweeps: dict[str, list[object]] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            single.append(override.input_line or "")
            continue
        sweep = override.value()
        if isinstance(sweep, ChoiceSweep):
            sweeps[key.lstrip("+~")] = list(sweep.list)
        try:
            first = next(iter(override.sweep_string_iterator()))
        except Exception:  # noqa: BLE001 - interval/glob sweeps: not checked here
            continue
        single.append(f"{key}={first}")
    return single, sweeps


def _compose(conf_dir: Path, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _is_group_override(item: str, conf_dir: Path) -> bool:
    key = item.partition("=")[0].lstrip("+~")
    return "/" in key or group_choices(conf_dir, key) is not None


def check_config_overrides(args: Sequence[str], conf_dir: Path) -> str | None:
    """The one-line error for an unknown key, an unparsable override, a value of the wrong type
    or a key left without a value. The schemas (normlab.config.schemas) decide: Hydra composes
    the config with the first value of each sweep, then every other value of a sweep is set on
    that config as Hydra will set it for its job."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    flags, overrides = split_hydra_args(args)
    if flags & (HYDRA_OWN_FLAGS | HYDRA_SHOW_FLAGS):
        return None
    try:
        single, sweeps = _parse(overrides)
        cfg = _compose(conf_dir, single)
        for key, values in sweeps.items():
            if not (_is_group_override(f"{key}=", conf_dir) or key.startswith("hydra.")):
                for value in values[1:]:
                    _set(cfg, key, value)
    except (HydraException, OmegaConfBaseException) as error:
        return error_line(_describe(error, conf_dir))
    untyped = _untyped_value_error(single, sweeps, cfg, conf_dir) or _added_key_error(cfg)
    if untyped:
        return error_line(untyped)
    missing = sorted(OmegaConf.missing_keys(cfg))  # keys a schema leaves without a default
    if missing:
        return error_line(f"{', '.join(missing)} must be set (no default): {missing[0]}=...")
    return None


def _untyped_value_error(
    single: list[str], sweeps: dict[str, list[object]], cfg: DictConfig, conf_dir: Path
) -> str | None:
    """The type check the schemas cannot make: keys of groups that stay open (norm parameters,
    Lightning's trainer arguments) are checked against the type of their value in the chosen
    option's file, as in 'norm.momentum must be a number, got 'abc''."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values: dict[str, list[object]] = {}
    for override in OverridesParser.create().parse_overrides(single):
        key = override.get_key_element().lstrip("+~")
        if "." in key and not key.startswith("hydra.") and not override.is_delete():
            values[key] = [override.value(), *sweeps.get(key, [])[1:]]
    open_keys = [k for k in values if _is_open(cfg, k.split(".")[0])]
    if not open_keys:
        return None
    base = _compose(conf_dir, [o for o in single if _is_group_override(o, conf_dir)])
    for key in open_keys:
        default = OmegaConf.select(base, key, default=None)
        for value in values[key]:
            message = _type_error(key, default, value)
            if message:
                return message
    return None


# Groups whose schema (normlab.config.schemas) holds every key normlab reads of them: a key
# added with `+` (which Hydra lets through any schema) is refused as a typo too. Their open nodes
# (Dict[str, Any], e.g. callbacks.extra) take any key; optim does not belong here (+optim.<arg>
# adds an argument of the optimizer class).
CLOSED_GROUPS = ("logger", "callbacks")


def _added_key_error(cfg: DictConfig) -> str | None:
    """'unknown config key 'logger.projct' ...' for a key of a CLOSED_GROUPS node that its
    schema does not declare."""
    for group in CLOSED_GROUPS:
        message = _undeclared_key(cfg.get(group), group)
        if message:
            return message
    return None


def _undeclared_key(node: Any, path: str) -> str | None:
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if schema is None or not dataclasses.is_dataclass(schema):
        return None  # a value, or an open node
    declared = [f.name for f in dataclasses.fields(schema)]
    for key in node:
        if key not in declared:
            close = difflib.get_close_matches(str(key), declared, n=1)
            hint = f"; did you mean '{path}.{close[0]}'?" if close else ""
            return f"unknown config key '{path}.{key}' ({path} keys: {', '.join(declared)}){hint}"
        message = _undeclared_key(node._get_node(key), f"{path}.{key}")
        if message:
            return message
    return None


def _is_open(cfg: DictConfig, top: str) -> bool:
    """Whether config node `top` has no schema (a plain dict: its keys are not type-checked)."""
    node = cfg.get(top)
    return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict


def _type_error(key: str, default: object, value: object) -> str | None:
    """A message when `value` does not have the type of `default` (bool, int or float)."""
    if value is None or default is None:
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        return None
    return None if ok else f"{key} must be {_KINDS[type(default)]}, got {value!r}"


def _set(cfg: DictConfig, key: str, value: object) -> None:
    """Set `key` as Hydra sets a job's override, failing as Hydra's compose fails."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException as error:
        raise ConfigCompositionException(f"Error merging override {key}={value}") from error


def _describe(error: BaseException, conf_dir: Path) -> str:
    """Hydra's multi-line composition error as one sentence."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = error.__cause__
    if isinstance(cause, ValidationError):
        return _value_error(cause, str(error).splitlines()[0])
    overridden = re.match(r"Could not override '([^']+)'", str(error))
    if overridden and isinstance(cause, ConfigAttributeError | ConfigKeyError):
        key = overridden.group(1)
        return f"unknown config key '{key}' (to add a new key write +{key}=...)" + _suggestion(
            cause, conf_dir
        )
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if cause is not None:
        lines += [line.strip() for line in str(cause).splitlines()[:1] if line.strip()]
    return " ".join(lines).replace(
        "See https://hydra.cc/docs/1.2/advanced/override_grammar/basic for details", ""
    )


def _value_error(error: Any, context: str) -> str:
    """'batch_size must be an integer, got 'abc'': the kind of value the schema declares for the
    key; OmegaConf's own first line where the declared type says nothing simpler."""
    parent, node = error.parent_node, error.child_node
    if isinstance(parent, ListConfig):  # an element of a typed list
        declared = parent._metadata.element_type
    else:
        node = node if node is not None else parent
        declared = getattr(getattr(node, "_metadata", None), "ref_type", None)
    if dataclasses.is_dataclass(declared) and isinstance(error.full_key, str):
        keys = ", ".join(f.name for f in dataclasses.fields(declared))
        return (
            f"{error.full_key} is a group of keys, not a value: set one of them, "
            f"{error.full_key}.<key>=... ({keys})"
        )
    kind = _kind(declared)
    if kind is None or not isinstance(error.full_key, str):
        return f"{context}: {str(error).splitlines()[0]}"
    return f"{error.full_key} must be {kind}, got {error.value!r}"


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _kind(declared: Any) -> str | None:
    """A declared type in words: 'an integer', 'a number', 'true or false or a string'."""
    if get_origin(declared) in (list, ListConfig) or declared is list:
        return "a list"
    options = set(get_args(declared)) - {type(None)} if get_args(declared) else {declared}
    if options == {int, float}:
        return _KINDS[float]
    if not options or not options <= set(_KINDS):
        return None
    return " or ".join(_KINDS[t] for t in _KINDS if t in options)


def _suggestion(error: Any, conf_dir: Path) -> str:
    """ "; did you mean 'optim.lr'?" for an unknown key close to a key of the same node (at the
    top level, also a config group's name)."""
    parent, leaf = error.parent_node, str(error.key)
    names = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
    full_key = str(error.full_key)
    prefix = full_key[: -len(leaf)] if full_key.endswith(leaf) else ""
    if not prefix:
        names += [p.name for p in conf_dir.iterdir() if p.is_dir()]
    close = difflib.get_close_matches(leaf, names, n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def preflight(args: Sequence[str], conf_dir: Path) -> None:
    """Exit with one clear line, before Hydra starts, on an unknown group option or key, an
    unparsable override, a value of the wrong type or a key left without a value. Hydra's
    help, version and shell completion (HYDRA_OWN_FLAGS) pass untouched; with --cfg, --info or
    --package only group options are checked."""
    message = check_group_overrides(args, conf_dir) or check_config_overrides(args, conf_dir)
    if message:
        print(message, file=sys.stderr)
        sys.exit(2)
    claim_named_run_folder(args, conf_dir)


MULTIRUN_FLAGS = frozenset(("-m", "--multirun"))


def named_run_dir(overrides: list[str], conf_dir: Path) -> Path | None:
    """The folder a single run was told to use (`hydra.run.dir=...`), as Hydra will resolve it;
    None when it was not named (Hydra's default is a new folder) or cannot be resolved here."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    named = [o for o in parsed if o.get_key_element().lstrip("+~") == "hydra.run.dir"]
    if not named:
        return None
    value = str(named[-1].value())
    if "${" in value:
        try:
            with initialize_config_dir(str(conf_dir), version_base="1.3"):
                full = compose(config_name="train", overrides=overrides, return_hydra_config=True)
            value = str(OmegaConf.select(full, "hydra.run.dir", throw_on_resolution_failure=True))
        except Exception:  # noqa: BLE001 - e.g. ${hydra:...}: left to the run's own check
            return None
    return Path(value).absolute()


def claim_named_run_folder(args: Sequence[str], conf_dir: Path) -> None:
    """A single run into a named folder claims it before Hydra writes .hydra/ and train.log
    there (normlab.run_folder): the lock, held for the rest of the process, and the
    fingerprint. Another process in the folder, or another run recorded there, ends the
    process with one line (exit 1); this same run already finished there ends it with the
    'already' line (exit 0), the folder untouched. Sweeps are claimed job by job
    (hydra_entry); other ranks of a DDP run never claim."""
    flags, overrides = split_hydra_args(args)
    if flags & (HYDRA_OWN_FLAGS | HYDRA_SHOW_FLAGS | MULTIRUN_FLAGS):
        return
    if any(o.replace(" ", "") in ("hydra.mode=MULTIRUN", "hydra.mode=multirun") for o in overrides):
        return
    folder = named_run_dir(overrides, conf_dir)
    if folder is None:
        return
    from normlab.platform.environment import process_rank  # heavy (torch): only for a named folder

    if process_rank() != 0:
        return
    try:
        done = preflight_claim(_compose(conf_dir, overrides), folder)
    except RunFolderError as error:
        print(error_line(str(error)), file=sys.stderr)
        sys.exit(1)
    if done is not None:
        print(already_line(folder, done))
        sys.exit(0)


def hydra_entry(cfg: DictConfig) -> float | None:
    """Run one job in Hydra's output folder; on failure print one line and, outside a sweep, exit 1.

    In a multirun a failed job is recorded in its results.json and the sweep goes on. The
    folder is held (normlab.run_folder) from the check of what it holds to the end of the run;
    a folder another process runs in, or that holds another run, fails the job with one line
    and nothing written into it.
    """
    from normlab.platform.environment import process_rank  # heavy imports after argument checks
    from normlab.platform.interruptions import take_stop_signal
    from normlab.train import run

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_dir = Path(str(hydra_cfg.sweep.dir)) if multirun else None
    folder = RunFolder(output_dir)
    primary = process_rank() == 0

    def note(outcome: Literal["launched", "skipped", "refused"], reason: str = "") -> None:
        if sweep_dir is not None and primary:
            note_job(sweep_dir, int(hydra_cfg.job.num), output_dir, outcome, reason)

    try:
        with folder.locked(create=False) if primary else nullcontext():
            new = fingerprint(cfg)
            done = finished_job(cfg, new, folder, list(hydra_cfg.overrides.task), multirun)
            if done is None and multirun and not RunFolder(output_dir).results.is_file():
                done = published_job(cfg, new, folder, Path(str(hydra_cfg.runtime.cwd)))
            if done is not None:
                note("skipped")
                return done.get("best_val_acc")
            note("launched")
            results = run(cfg, output_dir)
    except RunFolderError as error:  # nothing written: not recorded, no traceback
        note("refused", str(error))
        print(error_line(str(error)), file=sys.stderr)
        if multirun:
            return None
        sys.exit(1)
    except Exception as error:  # recorded in results.json by run()
        detail = "" if is_bad_input(error) else f" (traceback in {RunFolder(output_dir).error_log})"
        print(error_line(f"{error}{detail}"), file=sys.stderr)
        if multirun:
            return None
        sys.exit(1)
    reason = f" ({results['divergence_reason']})" if results.get("divergence_reason") else ""
    if primary:  # other ranks never see the outcome (rank 0 records it)
        print(f"normlab: {results['status']}{reason}; results in {RunFolder(output_dir).results}")
    stopped = take_stop_signal()
    if stopped is not None:  # SIGTERM or Ctrl-C: the whole command stops, later jobs too
        if sweep_dir is not None and primary:
            print(summary_line(sweep_dir), flush=True)
        sys.exit(128 + int(stopped))
    return results.get("best_val_acc")


def finished_job(
    cfg: DictConfig, new: Fingerprint, folder: RunFolder, overrides: list[str], multirun: bool
) -> RunResult | None:
    """The outcome this job already has in its folder, reported in one line (then not run
    again), or None to run it. Another run recorded there is refused (FolderHoldsAnotherRun)
    unless `resume=false`, which always runs. A sweep's job is skipped when completed, diverged
    or failed on bad input (finished_result; its overrides compared only where the folder
    records no fingerprint); a single run when completed or diverged."""
    resume = bool(cfg.resume)
    same = folder.same_run(new, resume)
    if not resume:
        return None
    if not multirun:
        done = folder.finished() if same else None
        if done is not None:
            print(already_line(folder.path, done))
        return done
    try:
        done = finished_result(folder.path, None if same else overrides)
    except ValueError as error:  # a folder from before fingerprints, holding another job
        raise FolderHoldsAnotherRun(str(error)) from None
    if done is not None:  # a re-run sweep: this job already has its outcome
        print(f"normlab: skipped, already {done['status']}: {folder.results}")
    return done


def published_job(
    cfg: DictConfig, new: Fingerprint, folder: RunFolder, launch_dir: Path
) -> RunResult | None:
    """A preset's sweep job that its committed run records already hold, finished with the
    same settings (the same fingerprint): the record, written into the job's folder with its
    fingerprint and reported in one line, so the job is not run again; None to run it. A
    comparison can so be extended, or finished in chunks on several machines, from a fresh
    clone (`published_records`, `preset`)."""
    where, preset = cfg.get("published_records"), cfg.get("preset")
    if not where or not preset:
        return None
    path = launch_dir / str(where) / f"{preset}.jsonl"
    found = published_record(path, new.digest)
    if found is None:
        return None
    number, record = found
    record.pop(RUN_KEY, None)
    source = f"{path.relative_to(launch_dir) if path.is_relative_to(launch_dir) else path}:{number}"
    record.update(output_dir=str(folder.path), published_from=source)
    with folder.locked():
        folder.record(new)
        write_results(folder.path, record)  # type: ignore[arg-type]
    print(
        f"normlab: skipped, already published: {source} holds this job "
        f"({record['status']}); copied to {folder.results}"
    )
    return record  # type: ignore[return-value]
