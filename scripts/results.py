"""Regenerate docs/results.md from the published comparisons' run records (make results).

Each comparison's runs are committed as docs/results/runs/<name>.jsonl: every job's
results.json, one per line (normlab.run_records), since sweep folders hold checkpoints and are
never committed. `make results` lays each file out as its sweep folder again and writes the
sweep's report (normlab.report) into docs/results.md with its figures; after running a sweep,
`make results ARGS=--publish` (or `--publish <name>`) first copies its folder's results.json
files into the records. Every table and figure comes from those records through the report
code; the only hand-written text is each section's account of where normlab agrees with the
paper and why it may not (docs/results/notes/<name>.md), and the commands, budget and machine
below, which say how the sweeps were made.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from normlab.aggregate import own_runs
from normlab.report import collect_results, write_report
from normlab.run_records import export_records, materialize_records

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Section:
    """One published sweep: where it lies, how it was made, and the notes on its outcome."""

    name: str
    title: str
    sweep: str
    command: str
    budget: str
    machine: str


CPU = (
    "this project's 2-core CPU development machine (AMD EPYC), torch 2.14.1; two sweeps at a "
    "time, one thread each (threads=1)"
)
SECTIONS = [
    Section(
        name="gn_batch_size",
        title="GN paper, Table 2: BN, GN and LN at a per-device batch of 32, 8 and 2 (CPU)",
        sweep="multirun/cpu_gn_batch_size",
        command=(
            "python train.py -m experiment=gn_batch_size norm=bn,gn,ln batch_size=32,8,2 "
            "data.train_samples=2000 data.val_samples=2000 trainer.max_epochs=5 threads=1 "
            "hydra.sweep.dir=multirun/cpu_gn_batch_size"
        ),
        budget=(
            "ResNet-20, 8 virtual devices, a 2,000-image training subset and 2,000 test "
            "images, 5 epochs; 3 seeds"
        ),
        machine=CPU,
    ),
    Section(
        name="rethinking_ema",
        title="Rethinking BN, Sec. 3: EMA (momentum 0.1, 0.01) against PreciseBN (10^3, 10^4 "
        "samples) at a batch of 32 and 256 (CPU)",
        sweep="multirun/cpu_rethinking_ema",
        command=(
            "python train.py -m experiment=rethinking_ema data.train_samples=10000 "
            "data.val_samples=2000 trainer.max_epochs=5 threads=1 "
            "hydra.sweep.dir=multirun/cpu_rethinking_ema (run as three commands into that "
            "folder, two at a time: norm.momentum=0.1 'hydra.sweep.subdir=m0.1_${hydra.job.num}'; "
            "norm.momentum=0.01 batch_size=256 'hydra.sweep.subdir=m0.01_b256_${hydra.job.num}'; "
            "norm.momentum=0.01 batch_size=32 'hydra.sweep.subdir=m0.01_b32_${hydra.job.num}')"
        ),
        budget=(
            "ResNet-20 on one device, a 10,000-image training subset and 2,000 test images, "
            "5 epochs (1,560 steps at batch 32, 195 at 256); every run evaluates after every "
            "epoch with its EMA and, from the same weights, with PreciseBN over 1,000 and 10,000 "
            "training samples (the preset's precise_bn.compare_samples); 3 seeds"
        ),
        machine=CPU,
    ),
    Section(
        name="proxy_norm",
        title="Proxy Normalization: BN, LN, GN, LN+PN and GN+PN at a batch of 32 and 2 (CPU)",
        sweep="multirun/cpu_proxy_norm",
        command=(
            "python train.py -m experiment=proxy_norm batch_size=32 data.train_samples=4000 "
            "data.val_samples=2000 trainer.max_epochs=5 threads=1 "
            "hydra.sweep.dir=multirun/cpu_proxy_norm; "
            "the same with batch_size=2 norm=ln,gn,proxy_ln,proxy_gn "
            "'hydra.sweep.subdir=b2_${hydra.job.num}' into the same folder"
        ),
        budget=(
            "ResNet-20, 8 virtual devices of 32 or 2, a 4,000-image training subset and 2,000 "
            "test images, 5 epochs, diagnostics by depth after the last epoch; 3 seeds"
        ),
        machine=CPU,
    ),
    Section(
        name="small_batch",
        title="Small-batch replacements of BN: BN, GN, BGN, CBN, BRN and IEBN at a batch of 2 "
        "and 4 (CPU)",
        sweep="multirun/cpu_small_batch",
        command=(
            "python train.py -m experiment=small_batch batch_size=2 data.train_samples=2000 "
            "data.val_samples=2000 trainer.max_epochs=5 threads=1 "
            "hydra.sweep.dir=multirun/cpu_small_batch 'hydra.sweep.subdir=b2_${hydra.job.num}'; "
            "the same with batch_size=4 'hydra.sweep.subdir=b4_${hydra.job.num}' into the same "
            "folder"
        ),
        budget=(
            "ResNet-20 on one device (the batch is the whole batch: CBN cannot be emulated by "
            "virtual devices), a 2,000-image training subset and 2,000 test images, 5 epochs; "
            "3 seeds"
        ),
        machine=CPU,
    ),
    Section(
        name="rethinking_consistency",
        title="Rethinking BN, Sec. 4-5: FrozenBN in the last epoch, batch statistics at "
        "inference, re-estimated statistics on a noisy domain, at a batch of 2 and 32 (CPU)",
        sweep="multirun/cpu_rethinking_consistency",
        command=(
            "python train.py -m experiment=rethinking_consistency batch_size=2 "
            "frozen_bn.last_epochs=0,1 data.train_samples=2000 data.val_samples=2000 "
            "trainer.max_epochs=5 threads=1 hydra.sweep.dir=multirun/cpu_rethinking_consistency "
            "'hydra.sweep.subdir=b2_${hydra.job.num}'; the same with batch_size=32 "
            "'hydra.sweep.subdir=b32_${hydra.job.num}' into the same folder"
        ),
        budget=(
            "ResNet-20, 8 virtual devices of 2 or 32, a 2,000-image training subset and 2,000 "
            "test images, 5 epochs, FrozenBN in the last of them (the preset's 5 of 30 scaled "
            "down), the shifted domain (Gaussian noise on the test images) evaluated at the end "
            "with the source statistics and with statistics re-estimated on it; 3 seeds"
        ),
        machine=CPU,
    ),
    Section(
        name="gn_groups",
        title="GN paper, Table 3: GN with 1, 2, 4, 8 and 16 groups (CPU)",
        sweep="multirun/cpu_gn_groups",
        command=(
            "python train.py -m experiment=gn_groups data.train_samples=2000 "
            "data.val_samples=2000 trainer.max_epochs=5 threads=1 "
            "hydra.sweep.dir=multirun/cpu_gn_groups"
        ),
        budget=(
            "ResNet-20, 8 virtual devices of 32, a 2,000-image training subset and 2,000 test "
            "images, 5 epochs; 3 seeds"
        ),
        machine=CPU,
    ),
]

HEADER = """# Results: normlab's reproductions of the papers' comparisons

Generated by `make results` (scripts/results.py) from the committed run records of the sweeps
named below (`docs/results/runs/<name>.jsonl`, every job's results.json); the tables and
figures are the sweeps' own reports (`python scripts/report.py <sweep folder>`).
All runs use the shared CIFAR-10 JPEG copy (`make data`), so absolute accuracies are far below
the papers' ImageNet numbers, which are listed beside ours as top-1 accuracy for the ordering,
not as a target. Budgets are a small fraction of the presets' defaults: read every
difference below a few points as within what such short runs can resolve (each table gives
the seeds' standard deviation).
"""


def records_file(section: Section) -> Path:
    """Where the section's run records are committed (normlab.run_records)."""
    return REPO / "docs" / "results" / "runs" / f"{section.name}.jsonl"


def publish(section: Section) -> str:
    """Copy the run records of the section's sweep folder into its committed records file."""
    sweep = REPO / section.sweep
    if not sweep.is_dir():
        raise FileNotFoundError(f"{section.sweep} does not exist; make it with: {section.command}")
    count = export_records(sweep, records_file(section), REPO)
    return f"published {count} runs of {section.sweep} to {records_file(section).relative_to(REPO)}"


def render_section(section: Section, docs: Path, work: Path) -> str:
    """One section: how the sweep was made, its report (from the committed run records, laid
    out as the sweep folder in `work`), its figures copied beside, the notes."""
    if not records_file(section).is_file():
        raise FileNotFoundError(
            f"{records_file(section).relative_to(REPO)} does not exist; run the sweep "
            f"({section.command}), then: make results ARGS='--publish {section.name}'"
        )
    sweep = work / section.name
    materialize_records(records_file(section), sweep)
    runs = own_runs(collect_results(sweep))
    minutes = pd.to_numeric(runs["wall_s"], errors="coerce").sum() / 60
    outputs = write_report(sweep)
    figures = docs / "results" / section.name
    figures.mkdir(parents=True, exist_ok=True)
    text = outputs["markdown"].read_text()
    for path in sorted(sweep.glob("*.png")):
        shutil.copy(path, figures / path.name)
        text = text.replace(f"]({path.name})", f"](results/{section.name}/{path.name})")
    notes = REPO / "docs" / "results" / "notes" / f"{section.name}.md"
    account = notes.read_text() if notes.exists() else "(no notes yet)\n"
    return "\n".join(
        [
            f"## {section.title}",
            "",
            f"- Command: `{section.command}`",
            f"- Budget: {section.budget}; {len(runs)} runs, {minutes:.0f} minutes of run time "
            "in all (the sum of the runs' wall_s)",
            f"- Machine: {section.machine}",
            f"- Sweep folder: `{section.sweep}`; run records: "
            f"`{records_file(section).relative_to(REPO)}`",
            "",
            text,
            "### Where normlab agrees with the paper, and why it may not",
            "",
            account,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results.md")
    parser.add_argument(
        "--publish",
        nargs="*",
        metavar="NAME",
        help="first copy the run records of these sections' sweep folders (all when no name "
        f"is given) into docs/results/runs/; sections: {', '.join(s.name for s in SECTIONS)}",
    )
    args = parser.parse_args()
    names = [section.name for section in SECTIONS]
    try:
        if args.publish is not None:
            unknown = sorted(set(args.publish) - set(names))
            if unknown:
                raise ValueError(f"no section {', '.join(unknown)}; choose from {', '.join(names)}")
            for section in SECTIONS:
                if not args.publish or section.name in args.publish:
                    print(publish(section))
        with tempfile.TemporaryDirectory() as work:
            body = [render_section(s, args.out.parent, Path(work)) for s in SECTIONS]
    except (FileNotFoundError, ValueError) as error:
        print(f"normlab: error: {error}", file=sys.stderr)
        sys.exit(1)
    args.out.write_text(HEADER + "\n" + "\n".join(body))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
