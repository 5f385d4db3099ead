"""Evaluate a checkpoint, or every run of a sweep, under every population-statistics choice.

    python eval.py ckpt_path=<run>/checkpoints/last.ckpt
    python eval.py ckpt_path=... precise_bn_samples=[500,5000] batch_sizes=[2,32] alphas=[0.1] corruption=gaussian_noise
    python eval.py sweep=multirun/<folder> precise_bn_samples=[1000]
    python eval.py ckpt_path=... data.root=/elsewhere/cifar10 data.val_samples=2000 trainer=gpu

Keys of the run's own config (a dotted key such as data.root, or trainer=cpu|gpu) change it
before evaluating. Writes <run>/eval/eval_results.json and prints the table (README "Evaluate a
checkpoint").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def parse(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(ckpt_path / sweep, EvalChoices values, overrides of the run's config) from key=value
    arguments; an unknown key is a ValueError naming the valid ones."""
    from normlab.job.evaluation import EvalChoices

    target: dict[str, Any] = {}
    choices: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for arg in argv:
        key, equals, raw = arg.partition("=")
        if not equals or not key:
            raise ValueError(f"'{arg}' is no key=value argument")
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]  # type: ignore[index]
        if key in ("ckpt_path", "sweep"):
            target[key] = value
        elif key in EvalChoices.__dataclass_fields__:
            choices[key] = value
        elif "." in key or key == "trainer":
            overrides[key] = value
        else:
            raise ValueError(
                f"unknown key '{key}'; keys: ckpt_path, sweep, "
                + ", ".join(EvalChoices.__dataclass_fields__)
                + ", trainer (cpu or gpu), or a dotted key of the run's config (data.root=...)"
            )
    if len(target) != 1:
        raise ValueError(
            "ckpt_path=<run folder>/checkpoints/<name>.ckpt or sweep=<sweep folder> is required "
            "(one of them)"
        )
    return target, choices, overrides


def main(argv: list[str]) -> None:
    from normlab.console import error_line
    from normlab.job.evaluation import EvalChoices

    try:
        target, given, overrides = parse(argv)
        choices = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalChoices), given))
    except Exception as error:  # noqa: BLE001 - bad arguments are one line
        print(error_line(f"{error}".splitlines()[0]), file=sys.stderr)
        sys.exit(2)
    from normlab.job.evaluation import (
        evaluate_checkpoint,
        evaluate_sweep,
        format_rows,
        varied_run_axes,
    )

    try:
        if "sweep" in target:
            rows = evaluate_sweep(Path(str(target["sweep"])), choices, overrides)  # type: ignore[arg-type]
            print(format_rows(rows, varied_run_axes(rows)))
        else:
            rows = evaluate_checkpoint(Path(str(target["ckpt_path"])), choices, None, overrides)  # type: ignore[arg-type]
            print(format_rows(rows))
    except (ValueError, FileNotFoundError) as error:
        print(error_line(str(error)), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
