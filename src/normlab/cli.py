"""The command line around Hydra: early checks of config-group choices, one-line errors,
failed jobs recorded without stopping a sweep."""

from __future__ import annotations

import difflib
import secrets
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from normlab.console import error_line

USER_ERRORS = (ValueError, FileNotFoundError, KeyError, TypeError)


def quiet_hydra_warnings() -> None:
    """conf/hydra/launcher/submitit_local.yaml deliberately refines the plugin's schema of the
    same name (so `hydra/launcher=submitit_local` keeps working); Hydra warns about that
    automatic schema match on every load, which is noise here."""
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")


def register_resolvers() -> None:
    """`${normlab_uid:}`: a random suffix, cached so one run resolves it once."""
    if not OmegaConf.has_resolver("normlab_uid"):
        OmegaConf.register_new_resolver("normlab_uid", lambda: secrets.token_hex(3), use_cache=True)


def group_choices(conf_dir: Path, group: str) -> list[str] | None:
    """The options of config group `group` (a folder of conf/), or None if it is no group."""
    folder = conf_dir / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml"))


def check_group_overrides(args: Sequence[str], conf_dir: Path) -> str | None:
    """The one-line error for the first `group=option` naming an option that does not exist."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
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


HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion")


def _parse(overrides: list[str]) -> tuple[list[str], dict[str, list[object]]]:
    """(overrides with each sweep replaced by its first value, key -> every value it takes).

    One compose of the first values finds unknown keys; the value lists let every job's value
    be type-checked. Interval and glob sweeps are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    single: list[str] = []
    values: dict[str, list[object]] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            single.append(override.input_line or "")
            values[key.lstrip("+~")] = [override.value()]
            continue
        sweep = override.value()
        if isinstance(sweep, ChoiceSweep):
            values[key.lstrip("+~")] = list(sweep.list)
        try:
            first = next(iter(override.sweep_string_iterator()))
        except Exception:  # noqa: BLE001 - interval/glob sweeps: not checked here
            continue
        single.append(f"{key}={first}")
    return single, values


def _compose(conf_dir: Path, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _is_group_override(item: str, conf_dir: Path) -> bool:
    key = item.partition("=")[0].lstrip("+~")
    return "/" in key or group_choices(conf_dir, key) is not None


def _type_error(key: str, default: object, value: object) -> str | None:
    """A message when `value` does not have the type of the default value of `key`."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        return None
    if ok or value is None:
        return None
    kind = {"bool": "true or false", "int": "an integer", "float": "a number"}
    return f"{key} must be {kind[type(default).__name__]}, got {value!r}"


def check_config_overrides(args: Sequence[str], conf_dir: Path) -> str | None:
    """The one-line error for an unknown key, an unparsable override or a value of the wrong
    type (checked against the default's type), found by composing the config as Hydra will."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a in HYDRA_FLAGS or a.startswith("--cfg") or a in ("-c", "-p") for a in args):
        return None
    overrides = [a for a in args if not a.startswith("-")]
    try:
        single, values = _parse(overrides)
        _compose(conf_dir, single)
        base = _compose(conf_dir, [o for o in single if _is_group_override(o, conf_dir)])
    except (HydraException, OmegaConfBaseException) as error:
        return error_line(_describe(error) + _suggestion(error, conf_dir, overrides))
    for key, choices in values.items():
        if _is_group_override(f"{key}=", conf_dir) or key.startswith("hydra."):
            continue
        default = OmegaConf.select(base, key, default=None)
        for value in choices:
            message = _type_error(key, default, value)
            if message:
                return error_line(message)
    return None


def _describe(error: BaseException) -> str:
    """Hydra's multi-line composition error as one sentence."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = error.__cause__
    if cause is not None:
        lines += [line.strip() for line in str(cause).splitlines()[:1] if line.strip()]
    text = " ".join(lines)
    if "not in struct" in text and "Could not override" in text:
        key = text.split("'")[1]
        return f"unknown config key '{key}' (to add a new key write +{key}=...)"
    return text.replace(
        "See https://hydra.cc/docs/1.2/advanced/override_grammar/basic for details", ""
    )


def _suggestion(error: BaseException, conf_dir: Path, overrides: list[str]) -> str:
    """ "; did you mean 'norm'?" for an unknown key close to a known key or group name."""
    text = _describe(error)
    if not text.startswith("unknown config key '"):
        return ""
    key = text.split("'")[1]
    parent, _, leaf = key.rpartition(".")
    try:
        groups = [o for o in overrides if _is_group_override(o, conf_dir)]
        node = _compose(conf_dir, groups)
    except Exception:  # noqa: BLE001 - a suggestion is optional
        return ""
    if parent:
        node = OmegaConf.select(node, parent)
    names = [str(k) for k in node] if isinstance(node, DictConfig) else []
    if not parent:
        names += [p.name for p in conf_dir.iterdir() if p.is_dir()]
    close = difflib.get_close_matches(leaf, names, n=1)
    return f"; did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""


def preflight(args: Sequence[str], conf_dir: Path) -> None:
    """Exit with one clear line, before Hydra starts, on an unknown group option or key, an
    unparsable override or a value of the wrong type."""
    message = check_group_overrides(args, conf_dir) or check_config_overrides(args, conf_dir)
    if message:
        print(message, file=sys.stderr)
        sys.exit(2)


def hydra_entry(cfg: DictConfig) -> float | None:
    """Run one job in Hydra's output folder; on failure print one line and, outside a sweep, exit 1.

    In a multirun a failed job is recorded in its results.json and the sweep goes on.
    """
    from normlab.train import run  # heavy imports after argument checks

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        results = run(cfg, output_dir)
    except Exception as error:  # recorded in results.json by run()
        detail = (
            "" if isinstance(error, USER_ERRORS) else f" (traceback in {output_dir / 'error.log'})"
        )
        print(error_line(f"{error}{detail}"), file=sys.stderr)
        if multirun:
            return None
        sys.exit(1)
    reason = f" ({results['divergence_reason']})" if results.get("divergence_reason") else ""
    print(f"normlab: {results['status']}{reason}; results in {output_dir / 'results.json'}")
    return results.get("best_val_acc")
