#!/usr/bin/env python
"""Benchmark (not a test): BraTS weights on every modality subset of unseen full-size cases.

`segpipe synth brats --size full` (240×240×155 at 1 mm, 2023 naming) with seeds outside the
shipped weights' training seeds; for each of the 15 non-empty subsets of {t2f, t1n, t1c, t2w}
an input folder holding only those files (hard links) goes through `segpipe predict`'s runner
(coarse → ROI → fine → postprocessing, in the input geometry) with the given weights. Region
Dice (WT = labels 1-3, TC = 1+3, ET = 3; evaluation.surface.dice, 1.0 when both are empty, as
BraTS scores it) per case and subset. Prints the 15-subset table (mean over cases), the mean
over subsets, the single-modality rows and the monotonicity violations: every (subset S,
modality m ∉ S) with WT(S ∪ {m}) < WT(S) − 0.02 (issue #13's bar), mean over cases.

    python bench/brats_subsets.py [--weights model_weights/brats_demo] [--cases 3] [--seed 7000]
    python bench/brats_subsets.py --sets 7000:3,8000:6,5:4,77:2,0:4   # issue #13's 19 cases, pooled
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.tasks import BRATS_2023_TAGS, BRATS_MODALITIES, BRATS_REGIONS_2023  # noqa: E402

TAGS = tuple(BRATS_2023_TAGS[m] for m in BRATS_MODALITIES)  # t2f, t1n, t1c, t2w: segpipe's modality order
REGIONS = BRATS_REGIONS_2023
TOLERANCE = 0.02


def subsets() -> list[tuple[str, ...]]:
    """The 15 subsets as file tags, in fine_seg.missing.subsets.all_subsets' order."""
    from fine_seg.missing.subsets import all_subsets

    return [tuple(TAGS[i] for i in sub) for sub in all_subsets(len(TAGS))]


def make_inputs(data: Path, scratch: Path) -> dict[tuple[str, ...], Path]:
    """One input folder per subset: case folders with only that subset's files (hard links)."""
    folders = {}
    cases = sorted(p for p in data.iterdir() if p.is_dir())
    for sub in subsets():
        folder = scratch / f"{data.name}_runs" / ("inputs_" + "+".join(sub))  # per data set: ids repeat across seeds
        for case in cases:
            dest = folder / case.name
            dest.mkdir(parents=True, exist_ok=True)
            for tag in sub:
                src, link = case / f"{case.name}-{tag}.nii.gz", dest / f"{case.name}-{tag}.nii.gz"
                if not link.exists():
                    os.link(src, link)
        folders[sub] = folder
    return folders


def region_dice(gt, pred) -> dict[str, float]:
    import numpy as np

    from evaluation.surface import dice

    return {r: dice(np.isin(gt, labels), np.isin(pred, labels), empty=1.0) for r, labels in REGIONS.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(ROOT / "model_weights" / "brats_demo"))
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7000)
    ap.add_argument("--sets", default=None, help="SEED:CASES,... several synthetic sets, cases pooled (overrides "
                                                 "--seed/--cases)")
    ap.add_argument("--scratch", default="runs/brats_subsets")
    ap.add_argument("--json", default=None, help="also write every figure here")
    args = ap.parse_args()

    import numpy as np
    import SimpleITK as sitk

    from pipeline.config import PredictSection
    from pipeline.inference.runner import run_predict
    from pipeline.log import setup_logging
    from pipeline.synth import write_brats_dataset

    setup_logging()
    scratch = Path(args.scratch).resolve()
    sets = [tuple(int(v) for v in item.split(":")) for item in args.sets.split(",")] if args.sets else \
        [(args.seed, args.cases)]
    weights = Path(args.weights).resolve()
    scores: dict[tuple[str, ...], list[dict[str, float]]] = {sub: [] for sub in subsets()}
    per_case: list[dict] = []
    t0 = time.perf_counter()
    for seed, cases in sets:
        data = scratch / f"data_seed{seed}_n{cases}"
        if not (data / "synth.json").is_file():
            write_brats_dataset(data, cases=cases, seed=seed, size="full", workers=2, force=True)
        for sub, folder in make_inputs(data, scratch).items():
            out = scratch / f"{data.name}_runs" / f"pred_{weights.parent.name}_{weights.name}" / folder.name
            result = run_predict(folder, out, PredictSection(weights=weights, device="cpu"))
            if result.failed:
                raise SystemExit(f"{'+'.join(sub)}: {result.failed}")
            for case in sorted(p.name for p in folder.iterdir()):
                gt = sitk.GetArrayFromImage(sitk.ReadImage(str(data / case / f"{case}-seg.nii.gz")))
                pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
                row = region_dice(gt, pred)
                scores[sub].append(row)
                per_case.append({"seed": seed, "case": case, "given": "+".join(sub), **row})
    wall = time.perf_counter() - t0
    n_cases = sum(c for _, c in sets)
    mean = {sub: {r: float(np.mean([row[r] for row in rows])) for r in REGIONS} for sub, rows in scores.items()}
    print(f"\n# {weights} on {n_cases} unseen full-size synthetic BraTS cases "
          f"(seed:cases {','.join(f'{s}:{c}' for s, c in sets)}), region Dice, mean over cases; "
          f"{wall:.0f} s for {len(scores)} subsets")
    print("| given | WT | TC | ET |\n|---|--:|--:|--:|")
    for sub, m in mean.items():
        print(f"| {'+'.join(sub)} | {m['WT']:.3f} | {m['TC']:.3f} | {m['ET']:.3f} |")
    overall = {r: float(np.mean([m[r] for m in mean.values()])) for r in REGIONS}
    print(f"| **mean of 15** | **{overall['WT']:.3f}** | **{overall['TC']:.3f}** | **{overall['ET']:.3f}** |")
    singles = {sub[0]: mean[sub]["WT"] for sub in mean if len(sub) == 1}
    violations, additions = [], 0
    for sub in mean:
        for tag in TAGS:
            if tag in sub:
                continue
            additions += 1  # 4 singles × 3 + 6 pairs × 2 + 4 triples × 1 = 28
            bigger = tuple(t for t in TAGS if t in sub or t == tag)
            drop = mean[sub]["WT"] - mean[bigger]["WT"]
            if drop > TOLERANCE:
                violations.append(("+".join(sub), tag, round(drop, 3)))
    print(f"single modality WT: {', '.join(f'{t} {v:.3f}' for t, v in singles.items())} (min {min(singles.values()):.3f})")
    print(f"monotonicity: {len(violations)} of {additions} additions lower WT by more than {TOLERANCE}: {violations}")
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": str(weights), "sets": sets, "cases": n_cases,
                                               "mean": {"+".join(k): v for k, v in mean.items()}, "overall": overall,
                                               "single_wt": singles, "violations": violations, "wall_s": wall,
                                               "per_case": per_case}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
