"""normlab training entry point: `python train.py [group=option ...] [key=value ...]`.

Hydra composes conf/train.yaml with the overrides; normlab.train.run does the work.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from normlab.cli import hydra_entry, preflight, quiet_hydra_warnings
from normlab.config.resolvers import register_resolvers

CONF_DIR = Path(__file__).resolve().parent / "conf"
register_resolvers()
quiet_hydra_warnings()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """One training job (or one job of a multirun sweep)."""
    return hydra_entry(cfg)


if __name__ == "__main__":
    preflight(sys.argv[1:], CONF_DIR)
    main()
