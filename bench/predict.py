"""Whole-process cost of `segpipe predict` on one full-size synthetic CT, against its floor.

    .venv/bin/python bench/predict.py [--weights model_weights/flare_demo] [--runs 3] [--cores 2]
                                      [--device cpu] [--threads N]
    .venv/bin/python bench/predict.py --full-size          # + the networks configs/flare.yaml configures
    .venv/bin/python bench/predict.py --config C.yaml [--configured-weights DIR]
    .venv/bin/python bench/predict.py --amp fp32,bf16      # each precision; agreement with the first
    .venv/bin/python bench/predict.py --runtime torch,openvino --amp fp32,bf16   # × each CPU runtime

The case is a FLARE-like CT resampled to 512×512×100 voxels at 0.8×0.8×2.5 mm (what nnU-Net
v2 3d_fullres needed 541 s for on a 2-core machine). Each run is a fresh process, as FLARE
starts a fresh container per case: wall time from the process start to its exit (the label
map is written atomically just before) and peak RSS from the kernel's rusage of that child.
The floor is a process that only starts Python, imports torch, reads the input and writes a
uint8 label map: the part no model can remove. Prints medians; goals: ≤ 15 s, ≤ 3 GB.

With --config (--full-size: configs/flare.yaml) the networks that config trains are timed beside
the shipped ones: their trained weights when --configured-weights names them, else the same
architectures randomly initialised (the cost of a network does not depend on its weights; the
ROI the coarse stage finds does, so a random coarse net is timed on the fallback ROI). Each
weights set gets its own fresh processes; the per-stage split (read, coarse, fine, post) is the
one `segpipe predict` logs per case.

--runtime openvino times the networks converted to OpenVINO IR: the bench copies each weights
folder and converts it once (`segpipe package --openvino`; the conversion time is printed), so
the timed processes read the IR as a packaged submission would.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


def timed(cmd: list[str], cores: int | None, env: dict[str, str] | None = None) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in MB, return code, stderr) of one fresh process."""
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
    return wall, usage.ru_maxrss / 1024, proc.returncode, err


# `segpipe predict`'s per-case log line: "case ID → FILE (12.34 s; read 0.12, coarse 0.50, fine 1.20, post 0.30)"
_CASE_LINE = re.compile(r"case \S+ → \S+ \(([\d.]+) s; ([^)]*)\)")


def stage_split(log: str) -> dict[str, float]:
    found = _CASE_LINE.search(log)
    if not found:
        return {}
    return {k: float(v) for k, v in (part.split() for part in found.group(2).split(", "))}


def configured_weights(config_path: str, dest: Path) -> Path:
    """A weights folder with the networks `config_path` configures, randomly initialised (seed 0)."""
    import torch
    from safetensors.torch import save_file

    from coarse_seg.train import stage_spec as coarse_spec
    from fine_seg.train import stage_spec as fine_spec
    from pipeline.config import load_config
    from pipeline.tasks import get_task
    from pipeline.training.export import build_stage_model
    from pipeline.weights import write_manifest

    config = load_config(config_path)
    task = get_task(config.task.name)
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for spec in (coarse_spec(config, task), fine_spec(config, task)):
        model = build_stage_model(spec.name, spec.model_config)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dest / f"{spec.name}.safetensors"))
        info = {"stage": spec.name, "model": model.cfg, "num_classes": spec.num_classes, "sample_stage": spec.sample_stage,
                "patch_size": list(spec.train.patch_size), **spec.info, "dtype": "float32",
                "best": {"note": f"random initialisation of {Path(config_path).name}"}}
        (dest / f"{spec.name}.json").write_text(json.dumps(info, indent=1))
    write_manifest(dest, name=f"{Path(config_path).stem}-random", task=task.name,
                   preprocessing=config.prepare.model_dump(mode="json"))
    return dest


def measure(weights: str, case: Path, scratch: Path, args: argparse.Namespace, env: dict[str, str],
            floor_src: str, amp: str = "auto", runtime: str = "torch") -> dict:
    """`args.runs` fresh predict processes (each beside a fresh floor process): medians."""
    py = sys.executable
    out = scratch / f"outputs-{Path(weights).name}-{runtime}-{amp}"
    cmd = [py, "-m", "pipeline", "predict", "-i", str(case.parent), "-o", str(out), "--weights", weights,
           "--device", args.device, "--set", f"predict.amp={amp}", "--set", f"predict.runtime={runtime}"]
    if args.threads:
        cmd += ["--set", f"predict.num_threads={args.threads}"]
    floor, runs, splits = [], [], []
    for i in range(args.runs):
        floor.append(timed([py, "-c", floor_src, str(case), str(scratch / "floor.nii.gz")], args.cores, env))
        runs.append(timed(cmd, args.cores, env))
        splits.append(stage_split(runs[-1][3]))
        print(f"{Path(weights).name} run {i + 1}: predict {runs[-1][0]:.2f} s, {runs[-1][1]:.0f} MB (rc {runs[-1][2]}); "
              f"floor {floor[-1][0]:.2f} s, {floor[-1][1]:.0f} MB; stages {splits[-1] or 'n/a'}")
    stages = {k: statistics.median(s[k] for s in splits if k in s) for k in splits[0]} if splits and splits[0] else {}
    return {
        "predict_s": statistics.median(r[0] for r in runs), "predict_peak_rss_mb": statistics.median(r[1] for r in runs),
        "floor_s": statistics.median(r[0] for r in floor), "floor_peak_rss_mb": statistics.median(r[1] for r in floor),
        "stages_s": stages, "runs": [r[:3] for r in runs], "floor": [r[:3] for r in floor],
        "dice_fg": _dice(out / "bench.nii.gz", scratch / "bench_label.nii.gz") if not args.case else float("nan"), "ok": all(r[2] == 0 for r in runs),
        "output": str(out / "bench.nii.gz"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(ROOT / "model_weights" / "flare_demo"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2, help="CPU affinity of the measured processes (0: all)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=None, help="predict.num_threads (default: the cores)")
    parser.add_argument("--scratch", default=None, help="folder for the synthetic case (kept between runs)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--config", default=None, help="also time the networks this config trains")
    parser.add_argument("--full-size", action="store_true", help="--config configs/flare.yaml")
    parser.add_argument("--case", default=None, help="time this CT (*_0000.nii.gz) instead of the synthetic full-size one")
    parser.add_argument("--amp", default="auto",
                        help="predict.amp values to time, comma-separated (e.g. fp32,bf16); each later one is "
                             "compared with the first, per organ, on the same weights")
    parser.add_argument("--runtime", default="torch",
                        help="predict.runtime values to time, comma-separated (torch,openvino); with --amp, every "
                             "pair is timed and compared with the first pair")
    parser.add_argument("--configured-weights", default=None,
                        help="trained weights of --config (default: its networks, randomly initialised)")
    args = parser.parse_args(argv)
    if args.full_size and not args.config:
        args.config = str(ROOT / "configs" / "flare.yaml")

    scratch = Path(args.scratch or Path(tempfile.gettempdir()) / "segpipe-bench-predict")
    inp = scratch / "inputs"
    inp.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if args.case:  # predict reads a folder: link the one case into its own
        inp = scratch / "inputs-case"
        inp.mkdir(exist_ok=True)
        case = inp / "bench_0000.nii.gz"
        case.unlink(missing_ok=True)
        case.symlink_to(Path(args.case).resolve())
    else:
        case = make_case(inp)
    print(f"case: {case} ({'given' if args.case else f'{SIZE} at {SPACING} mm'}; ready in {time.perf_counter() - t:.1f} s)")
    weights = {"shipped": args.weights}
    if args.config:
        weights["configured"] = args.configured_weights or str(configured_weights(args.config, scratch / "configured"))
        print(f"configured networks of {args.config}: {weights['configured']}"
              f"{'' if args.configured_weights else ' (random initialisation)'}")
    if args.runs < 1:
        return 0
    env = {**os.environ, "SEGPIPE_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    floor_src = FLOOR.format(cuda="torch.cuda.init(); torch.zeros(1, device='cuda')" if args.device == "cuda" else "")
    variants = [(rt, amp) for rt in args.runtime.split(",") for amp in args.amp.split(",")]
    label = {v: " ".join(x for x, n in zip(v, (len(args.runtime.split(",")), len(args.amp.split(","))), strict=True)
                         if n > 1) for v in variants}
    ir = {name: openvino_copy(w, scratch / f"{Path(w).name}-openvino")
          for name, w in weights.items()} if any(rt == "openvino" for rt, _ in variants) else {}
    figures = {f"{name} {label[v]}".strip(): measure(ir[name] if v[0] == "openvino" else w, case, scratch, args, env,
                                                     floor_src, v[1], v[0])
               for name, w in weights.items() for v in variants}
    agreement = {}
    for name in weights:
        for v in variants[1:]:
            a, b = figures[f"{name} {label[variants[0]]}"]["output"], figures[f"{name} {label[v]}"]["output"]
            agreement[f"{name} {label[v]} vs {label[variants[0]]}"] = _organ_dice(Path(a), Path(b))
    load = os.getloadavg()[0]
    for name, med in figures.items():
        split = ", ".join(f"{k} {v:.2f}" for k, v in med["stages_s"].items()) or "n/a"
        print(f"{name} ({Path(weights[name.split()[0]]).name}), median of {args.runs}: predict {med['predict_s']:.2f} s / "
              f"{med['predict_peak_rss_mb']:.0f} MB peak RSS (stages: {split}); floor {med['floor_s']:.2f} s / "
              f"{med['floor_peak_rss_mb']:.0f} MB; predict − floor {med['predict_s'] - med['floor_s']:.2f} s "
              f"(goal ≤ 15 s, ≤ 3072 MB; nnU-Net 3d_fullres: 541 s); foreground Dice {med['dice_fg']:.3f}")
    for pair, organs in agreement.items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in organs.items())
        print(f"agreement {pair}: per-organ Dice min {min(organs.values(), default=float('nan')):.4f} ({shown})")
    print(f"machine: {os.cpu_count()} CPUs, affinity {args.cores or 'all'}, load average {load:.1f}")
    if args.json:
        shipped = figures[next(iter(figures))]
        Path(args.json).write_text(json.dumps({**shipped, "load": load, "all": figures, "agreement": agreement},
                                              indent=1))
    return 0 if all(f["ok"] for f in figures.values()) else 1


def openvino_copy(weights: str, dest: Path) -> str:
    """A copy of `weights` with its networks converted to OpenVINO IR (as `segpipe package --openvino`)."""
    import shutil

    from pipeline.inference.openvino_net import write_openvino
    from pipeline.weights import WeightsError, read_manifest

    try:
        converted = any("openvino" in stage for stage in read_manifest(dest)["stages"].values())
    except WeightsError:
        converted = False
    if not converted:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(weights, dest)
        t = time.perf_counter()
        shapes = write_openvino(dest)
        print(f"{Path(weights).name}: converted to OpenVINO IR in {time.perf_counter() - t:.1f} s ({shapes})")
    return str(dest)


def _organ_dice(a_path: Path, b_path: Path) -> dict[str, float]:
    """Dice per label between two label maps (labels present in either), via evaluation.surface."""
    import numpy as np
    import SimpleITK as sitk

    from evaluation.surface import dice

    a = sitk.GetArrayFromImage(sitk.ReadImage(str(a_path)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(b_path)))
    return {str(k): float(dice(a == k, b == k)) for k in sorted(set(np.unique(a)) | set(np.unique(b))) if k}


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
