"""Benchmark `segpipe synth`: median seconds per case (generation and NIfTI writing), and what
gzip costs. Run: .venv/bin/python bench/synth.py [--cases 3] [--size full] [--kind flare brats]

Prints one line per measurement; medians over --cases cases (different seeds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import SimpleITK as sitk

from pipeline.image_io import write_image
from pipeline.synth import make_brats_case, make_flare_case
from pipeline.synth.atlas import load_atlas


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--size", default="full", choices=["small", "full"])
    parser.add_argument("--kind", nargs="+", default=["flare", "brats"], choices=["flare", "brats"])
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} size={args.size} cases={args.cases}")
    with tempfile.TemporaryDirectory() as tmp:
        if "flare" in args.kind:
            gen, write, raw, voxels, sizes, zlib1 = [], [], [], [], [], []
            for seed in range(args.cases):
                case, t = timed(lambda s=seed: make_flare_case(s, args.size))
                gen.append(t)
                voxels.append(case.image.size)
                image = sitk.GetImageFromArray(case.image)
                label = sitk.GetImageFromArray(case.label)
                start = time.perf_counter()
                write_image(image, Path(tmp) / "i.nii.gz")
                write_image(label, Path(tmp) / "l.nii.gz")
                write.append(time.perf_counter() - start)
                sizes.append((Path(tmp) / "i.nii.gz").stat().st_size / case.image.nbytes)
                start = time.perf_counter()
                write_image(image, Path(tmp) / "i.nii", compress=False)
                raw.append(time.perf_counter() - start)
                data = case.image.tobytes()
                start = time.perf_counter()
                zlib.compress(data, 1)
                zlib1.append(time.perf_counter() - start)
            print(f"flare {args.size}: median {statistics.median(voxels) / 1e6:.1f} Mvoxel/case")
            print(f"flare generate        median {statistics.median(gen):6.2f} s/case")
            print(f"flare write gz (img+lab) median {statistics.median(write):6.2f} s/case  (image gz = {statistics.median(sizes):.0%} of raw)")
            print(f"flare write raw .nii   median {statistics.median(raw):6.2f} s/case  (image only)")
            print(f"python zlib level 1    median {statistics.median(zlib1):6.2f} s/case  (image only, for comparison)")
            print(f"flare total           median {statistics.median(g + w for g, w in zip(gen, write, strict=True)):6.2f} s/case")
        if "brats" in args.kind:
            _, t_atlas = timed(lambda: load_atlas("auto"))
            gen, write = [], []
            for seed in range(args.cases):
                case, t = timed(lambda s=seed: make_brats_case(s, args.size))
                gen.append(t)
                images = [sitk.GetImageFromArray(a) for a in (*case.images.values(), case.label)]
                start = time.perf_counter()
                for i, im in enumerate(images):
                    write_image(im, Path(tmp) / f"b{i}.nii.gz")
                write.append(time.perf_counter() - start)
            print(f"brats atlas load (once per process) {t_atlas:6.2f} s  ({load_atlas('auto').source})")
            print(f"brats generate        median {statistics.median(gen):6.2f} s/case")
            print(f"brats write 5 files   median {statistics.median(write):6.2f} s/case")
            print(f"brats total           median {statistics.median(g + w for g, w in zip(gen, write, strict=True)):6.2f} s/case")


if __name__ == "__main__":
    main()
