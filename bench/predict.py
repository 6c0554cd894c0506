"""Whole-process cost of `segpipe predict` on one full-size synthetic CT, against its floor.

    .venv/bin/python bench/predict.py [--weights model_weights/flare_demo] [--runs 3] [--cores 2]
                                      [--device cpu] [--threads N]

The case is a FLARE-like CT resampled to 512×512×100 voxels at 0.8×0.8×2.5 mm (what nnU-Net
v2 3d_fullres needed 541 s for on a 2-core machine). Each run is a fresh process, as FLARE
starts a fresh container per case: wall time from the process start to its exit (the label
map is written atomically just before) and peak RSS from the kernel's rusage of that child.
The floor is a process that only starts Python, imports torch, reads the input and writes a
uint8 label map: the part no model can remove. Prints medians; goals: ≤ 15 s, ≤ 3 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = (512, 512, 100)  # x, y, z
SPACING = (0.8, 0.8, 2.5)

FLOOR = """
import sys, time
import numpy as np, torch, SimpleITK as sitk
{cuda}
image = sitk.ReadImage(sys.argv[1])
labels = sitk.GetImageFromArray(np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8))
labels.CopyInformation(image)
sitk.WriteImage(labels, sys.argv[2], True)
"""


def make_case(folder: Path, seed: int = 3) -> Path:
    """A full-size synthetic CT resampled onto the benchmark grid (centred on the body)."""
    import numpy as np
    import SimpleITK as sitk

    from pipeline.image_io import write_image
    from pipeline.synth.flare import make_flare_case

    path = folder / "bench_0000.nii.gz"
    if path.exists():
        return path
    case = make_flare_case(seed, "full")
    src = sitk.GetImageFromArray(case.image)
    case.geometry.apply_to(src)
    centre = np.asarray(src.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in src.GetSize()]))
    origin = centre - (np.asarray(SIZE) - 1) / 2 * np.asarray(SPACING)
    ref = sitk.Image(SIZE, sitk.sitkInt16)
    ref.SetSpacing(SPACING)
    ref.SetOrigin(tuple(float(v) for v in origin))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    write_image(out, path)
    labels = sitk.GetImageFromArray(case.label)
    case.geometry.apply_to(labels)
    write_image(sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8),
                folder.parent / "bench_label.nii.gz")
    return path


def timed(cmd: list[str], cores: int | None, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, return code) of one fresh process."""
    def pin() -> None:
        if cores:
            os.sched_setaffinity(0, set(range(min(cores, os.cpu_count() or cores))))

    t = time.perf_counter()
    proc = subprocess.Popen(cmd, preexec_fn=pin, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        print(err[-2000:], file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(ROOT / "model_weights" / "flare_demo"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2, help="CPU affinity of the measured processes (0: all)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=None, help="predict.num_threads (default: the cores)")
    parser.add_argument("--scratch", default=None, help="folder for the synthetic case (kept between runs)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    scratch = Path(args.scratch or Path(tempfile.gettempdir()) / "segpipe-bench-predict")
    inp = scratch / "inputs"
    inp.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    case = make_case(inp)
    print(f"case: {case} ({'x'.join(map(str, SIZE))} at {SPACING} mm; ready in {time.perf_counter() - t:.1f} s)")
    if args.runs < 1:
        return 0
    py = sys.executable
    env = {**os.environ, "SEGPIPE_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    floor_src = FLOOR.format(cuda="torch.cuda.init(); torch.zeros(1, device='cuda')" if args.device == "cuda" else "")
    cmd = [py, "-m", "pipeline", "predict", "-i", str(inp), "-o", str(scratch / "outputs"), "--weights", args.weights,
           "--device", args.device]
    if args.threads:
        cmd += ["--set", f"predict.num_threads={args.threads}"]
    floor, runs = [], []
    for i in range(args.runs):
        floor.append(timed([py, "-c", floor_src, str(case), str(scratch / "floor.nii.gz")], args.cores, env))
        runs.append(timed(cmd, args.cores, env))
        print(f"run {i + 1}: predict {runs[-1][0]:.2f} s, {runs[-1][1]:.0f} MB (rc {runs[-1][2]}); "
              f"floor {floor[-1][0]:.2f} s, {floor[-1][1]:.0f} MB")
    med = {
        "predict_s": statistics.median(r[0] for r in runs), "predict_peak_rss_mb": statistics.median(r[1] for r in runs),
        "floor_s": statistics.median(r[0] for r in floor), "floor_peak_rss_mb": statistics.median(r[1] for r in floor),
    }
    dsc = _dice(scratch / "outputs" / "bench.nii.gz", scratch / "bench_label.nii.gz")
    load = os.getloadavg()[0]
    print(f"median of {args.runs}: predict {med['predict_s']:.2f} s / {med['predict_peak_rss_mb']:.0f} MB peak RSS; "
          f"floor {med['floor_s']:.2f} s / {med['floor_peak_rss_mb']:.0f} MB; predict − floor "
          f"{med['predict_s'] - med['floor_s']:.2f} s (goal ≤ 15 s, ≤ 3072 MB; nnU-Net 3d_fullres: 541 s)")
    print(f"machine: {os.cpu_count()} CPUs, affinity {args.cores or 'all'}, load average {load:.1f}; "
          f"weights {Path(args.weights).name}; foreground Dice vs the synthetic truth {dsc:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({**med, "runs": runs, "floor": floor, "load": load, "dice_fg": dsc}, indent=1))
    return 0 if all(r[2] == 0 for r in runs) else 1


def _dice(pred_path: Path, gt_path: Path) -> float:
    import numpy as np
    import SimpleITK as sitk

    if not pred_path.exists() or not gt_path.exists():
        return float("nan")
    p = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_path))) > 0
    g = sitk.GetArrayFromImage(sitk.ReadImage(str(gt_path))) > 0
    return 2 * float(np.count_nonzero(p & g)) / max(1, int(p.sum()) + int(g.sum()))


if __name__ == "__main__":
    sys.exit(main())
