"""The command line around Hydra: early checks of config-group choices, one-line errors,
failed jobs recorded without stopping a sweep."""

from __future__ import annotations

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


def preflight(args: Sequence[str], conf_dir: Path) -> None:
    """Exit with one clear line, before Hydra starts, when a group option does not exist."""
    message = check_group_overrides(args, conf_dir)
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
    print(f"normlab: {results['status']}; results in {output_dir / 'results.json'}")
    return results.get("best_val_acc")
