"""Evaluate a checkpoint under every population-statistics choice, one row per choice.

    python eval.py ckpt_path=<run>/checkpoints/last.ckpt
    python eval.py ckpt_path=... precise_bn_samples=[500,5000] batch_sizes=[2,32] alphas=[0.1] corruption=gaussian_noise

Writes <run>/eval/eval_results.json and prints the table (README "Evaluate a checkpoint").
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf


def main(argv: list[str]) -> None:
    from normlab.console import error_line
    from normlab.evaluation import EvalChoices

    try:
        given = OmegaConf.from_dotlist(argv)
        ckpt = given.pop("ckpt_path", None)
        if not ckpt:
            raise ValueError("ckpt_path=<run folder>/checkpoints/<name>.ckpt is required")
        choices = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalChoices), given))
    except Exception as error:  # noqa: BLE001 - bad arguments are one line
        print(
            error_line(
                f"{error}".splitlines()[0]
                + "; keys: ckpt_path, "
                + ", ".join(EvalChoices.__dataclass_fields__)
            ),
            file=sys.stderr,
        )
        sys.exit(2)
    from normlab.evaluation import evaluate_checkpoint, format_rows

    try:
        rows = evaluate_checkpoint(Path(str(ckpt)), choices)  # type: ignore[arg-type]
    except (ValueError, FileNotFoundError) as error:
        print(error_line(str(error)), file=sys.stderr)
        sys.exit(1)
    print(format_rows(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
