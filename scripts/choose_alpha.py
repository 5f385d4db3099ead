"""Choose the example weight alpha of example-weighed inference (Summers & Dinneen, 2020)
post hoc, on training samples held out from training, and report validation accuracy for a
grid of alphas.

    python train.py norm=bn batch_size=8 data.holdout_samples=200
    python scripts/choose_alpha.py outputs/<date>/<run> [--alphas 0 0.05 0.1 0.2 0.3 0.5]

Writes alpha_selection.json into the run folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from normlab.data import ImageDataModule
from normlab.job.evaluation import load_experiment
from normlab.norms.population import population_layers
from normlab.run_folder import BEST_CHECKPOINT, LAST_CHECKPOINT, RunFolder
from normlab.stats.callbacks import set_eval_alpha
from normlab.stats.evaluate import evaluate_accuracy

DEFAULT_ALPHAS = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0]


def load_run(run_dir: Path, checkpoint: str) -> tuple[torch.nn.Module, ImageDataModule]:
    """The run's model with its checkpoint's weights, and its data module: the run's
    experiment only (no Trainer, no logger), here on the CPU."""
    ckpt = RunFolder(run_dir).checkpoint(checkpoint)
    _, _, experiment = load_experiment(ckpt, {"trainer": "cpu"})
    return experiment.model, experiment.datamodule


def accuracy_by_alpha(model: torch.nn.Module, batches: list, alphas: list[float]) -> list[float]:
    """Accuracy over `batches` for each example weight."""
    layers = population_layers(model)
    results = []
    for alpha in alphas:
        for layer in layers:
            set_eval_alpha(layer, alpha)
        results.append(evaluate_accuracy(model, batches, torch.device("cpu")))
    for layer in layers:
        set_eval_alpha(layer, 0.0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--alphas", type=float, nargs="+", default=DEFAULT_ALPHAS)
    parser.add_argument(
        "--checkpoint", default=LAST_CHECKPOINT, choices=[LAST_CHECKPOINT, BEST_CHECKPOINT]
    )
    args = parser.parse_args()
    try:
        model, datamodule = load_run(args.run_dir, args.checkpoint)
        holdout = list(datamodule.holdout_dataloader())
        if not population_layers(model):
            raise ValueError("the run's norm has no population statistics: nothing to weigh")
        held = accuracy_by_alpha(model, holdout, args.alphas)
        val = accuracy_by_alpha(model, list(datamodule.val_dataloader()), args.alphas)
    except (ValueError, FileNotFoundError) as error:
        print(f"normlab: error: {error}", file=sys.stderr)
        sys.exit(1)
    best = max(range(len(args.alphas)), key=lambda i: (held[i], -args.alphas[i]))
    print(f"{'alpha':>6} {'held-out':>9} {'val':>7}")
    for alpha, h, v in zip(args.alphas, held, val, strict=True):
        mark = "  <- chosen on held-out" if alpha == args.alphas[best] else ""
        print(f"{alpha:6.3f} {h:9.4f} {v:7.4f}{mark}")
    report = {
        "alphas": args.alphas,
        "holdout_acc": held,
        "val_acc": val,
        "chosen_alpha": args.alphas[best],
        "val_acc_at_chosen": val[best],
    }
    (args.run_dir / "alpha_selection.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
