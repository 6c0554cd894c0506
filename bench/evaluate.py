"""Benchmark: `segpipe evaluate flare` on full-size FLARE-like cases (issue #7's bar: 50 cases
of 512×512×100 in under 5 minutes on 2 cores).

    .venv/bin/python bench/evaluate.py [--cases 50] [--workers 2] [--repeats 1] [--keep DIR]
                                       [--source ellipsoids|synth]

Cases: 13 organ-like ellipsoids/tubes with adult sizes in mm on a 512×512×100 grid at
0.8×0.8×2.5 mm (`ellipsoids`, the default, fixed size), or `pipeline.synth`'s full-size
phantoms (`synth`, 80–200 slices). Predictions are the ground truth shifted by 1–2 voxels,
with organs grown, shrunk or dropped, so every metric path (surfaces, z-crop, empty organ)
runs. Only the evaluation is timed; it prints the median wall time and per-case cost.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPE = (100, 512, 512)  # (z, y, x)
SPACING_ZYX = (2.5, 0.8, 0.8)
# organ: (centre as a fraction of the volume (z, y, x), radii in mm (z, y, x))
ORGANS: dict[int, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    1: ((0.70, 0.45, 0.33), (80, 90, 75)),  # liver
    2: ((0.40, 0.62, 0.36), (50, 28, 25)),  # right kidney
    3: ((0.72, 0.60, 0.72), (50, 45, 28)),  # spleen
    4: ((0.55, 0.52, 0.55), (18, 15, 60)),  # pancreas
    5: ((0.50, 0.60, 0.52), (110, 11, 11)),  # aorta
    6: ((0.50, 0.58, 0.44), (100, 12, 12)),  # IVC
    7: ((0.68, 0.62, 0.40), (14, 6, 8)),  # right adrenal
    8: ((0.66, 0.62, 0.60), (14, 6, 8)),  # left adrenal
    9: ((0.60, 0.40, 0.36), (30, 15, 15)),  # gallbladder
    10: ((0.85, 0.62, 0.52), (40, 8, 8)),  # esophagus
    11: ((0.72, 0.42, 0.64), (55, 40, 50)),  # stomach
    12: ((0.48, 0.48, 0.42), (30, 18, 40)),  # duodenum
    13: ((0.44, 0.62, 0.66), (50, 28, 25)),  # left kidney
}


def ellipsoid_labels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, np.uint8)
    for value, (frac, radii_mm) in ORGANS.items():
        centre = np.array(frac) * SHAPE + rng.normal(0, 3, 3)
        radii = np.array(radii_mm) / SPACING_ZYX * rng.uniform(0.85, 1.15, 3)
        lo = np.maximum(0, np.floor(centre - radii).astype(int))
        hi = np.minimum(SHAPE, np.ceil(centre + radii).astype(int) + 1)
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 <= 1
        box = label[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        box[inside] = value
    return label


def synth_labels(seed: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    from pipeline.synth.flare import make_flare_case

    case = make_flare_case(seed, "full")
    return case.label, case.spacing_zyx


def perturb(label: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(10_000 + seed)
    pred = np.roll(label, tuple(int(v) for v in rng.integers(-2, 3, 3)), axis=(0, 1, 2))
    boxes = ndimage.find_objects(pred)
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        action = rng.choice(["keep", "grow", "shrink", "drop"], p=[0.55, 0.2, 0.2, 0.05])
        if action == "drop":
            pred[pred == value] = 0
            continue
        if action == "keep":
            continue
        grown = tuple(slice(max(0, s.start - 2), s.stop + 2) for s in box)
        sub = pred[grown]
        organ = sub == value
        if action == "grow":
            sub[ndimage.binary_dilation(organ, iterations=2) & (sub == 0)] = value
        else:
            sub[organ & ~ndimage.binary_erosion(organ, iterations=2)] = 0
    return pred


def write(path: Path, array: np.ndarray, spacing_zyx: tuple[float, float, float]) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(reversed(spacing_zyx)))
    sitk.WriteImage(img, str(path), useCompression=True)


def make_dataset(root: Path, n: int, source: str) -> None:
    (root / "gt").mkdir(parents=True, exist_ok=True)
    (root / "pred").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(n):
        if source == "synth":
            gt, spacing = synth_labels(i)
        else:
            gt, spacing = ellipsoid_labels(i), SPACING_ZYX
        write(root / "gt" / f"FLARE22_Ts_{i:04d}.nii.gz", gt, spacing)
        write(root / "pred" / f"FLARE22_Ts_{i:04d}.nii.gz", perturb(gt, i), spacing)
        print(f"\rwriting cases: {i + 1}/{n} ({time.perf_counter() - t0:.0f} s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def _cpu_seconds() -> float:
    """User + system time of this process and its finished workers: the load-independent cost."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--source", choices=["ellipsoids", "synth"], default="ellipsoids")
    parser.add_argument("--keep", metavar="DIR", help="write (or reuse) the cases here instead of a temp folder")
    args = parser.parse_args()

    from evaluation.flare import evaluate_flare

    os.environ.setdefault("SEGPIPE_PROGRESS", "0")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="segpipe-bench-eval-"))
    try:
        have = len(list((root / "gt").glob("*.nii.gz"))) if (root / "gt").is_dir() else 0
        if have < args.cases:
            make_dataset(root, args.cases, args.source)
        times = []
        for r in range(args.repeats):
            load = os.getloadavg()[0]
            cpu0 = _cpu_seconds()
            t0 = time.perf_counter()
            results = evaluate_flare(root / "pred", root / "gt", workers=args.workers)
            dt = time.perf_counter() - t0
            cpu = _cpu_seconds() - cpu0
            times.append(dt)
            print(f"run {r + 1}: {dt:.1f} s wall for {len(results['cases'])} cases; {cpu:.1f} CPU-s "
                  f"(= {cpu / args.workers:.1f} s on {args.workers} idle cores); load average {load:.2f} before, "
                  f"{os.getloadavg()[0]:.2f} after")
        median = statistics.median(times)
        shape = "x".join(str(v) for v in reversed(SHAPE)) if args.source == "ellipsoids" else "synth full"
        print(f"evaluate flare: {args.cases} cases ({shape}), {args.workers} workers, {os.cpu_count()} CPUs: "
              f"median {median:.1f} s ({median / args.cases:.2f} s/case); target < 300 s: {'PASS' if median < 300 else 'FAIL'}")
        print(f"mean DSC {results['overall']['dsc']:.4f}, mean NSD {results['overall']['nsd']:.4f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
