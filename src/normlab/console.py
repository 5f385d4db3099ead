"""What a run prints: the composed config as a tree, one-line errors."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree


def print_config(
    cfg: DictConfig, order: tuple[str, ...] = ("norm", "model", "data", "trainer")
) -> None:
    """Print the resolved config as a rich tree, the main groups first."""
    tree = Tree("config", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        tree.add(f"[bold]{key}[/bold]").add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    Console(file=sys.stdout, force_terminal=False, width=120).print(tree)


def error_line(message: str) -> str:
    """An error as the one line a user sees: 'normlab: error: ...' with no line breaks."""
    flat = " ".join(str(message).split())
    return f"normlab: error: {flat}"
