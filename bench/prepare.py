"""Benchmarks and measurements of `segpipe prepare` (issue #3). Prints figures; asserts nothing.

    python bench/prepare.py labels            # label resampling: nearest vs per-label linear (argmax / CSSN threshold)
    python bench/prepare.py speed [--cases 5] # segpipe prepare vs nnUNetv2_plan_and_preprocess on the same full-size cases
    python bench/prepare.py storage [--work W] # bytes per prepared case and read speed of each sample encoding

`speed` needs nnU-Net in a throwaway venv (never a segpipe dependency):
    python3.11 -m venv /tmp/nnunet-venv && /tmp/nnunet-venv/bin/pip install torch==2.13.0 nnunetv2
and finds it through --nnunet-venv (default /tmp/nnunet-venv).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import preprocess as pp  # noqa: E402


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
            f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (1/5/15 min)")


# label resampling ----------------------------------------------------------------------------
# organs of a continuous phantom in mm (z, y, x): (label, centre, radii); later ones overwrite earlier
PHANTOM = [
    (1, (130, 150, 110), (60, 55, 70)),    # liver: large
    (3, (140, 130, 230), (40, 30, 35)),    # spleen
    (2, (110, 200, 105), (35, 18, 22)),    # right kidney
    (13, (110, 200, 200), (35, 18, 22)),   # left kidney
    (4, (110, 160, 160), (10, 12, 45)),    # pancreas: flat
    (5, (125, 185, 155), (120, 9, 9)),     # aorta: long thin tube
    (6, (125, 180, 130), (100, 8, 9)),     # IVC
    (7, (150, 195, 120), (14, 3, 8)),      # right adrenal: 3 mm half-thickness plate
    (8, (150, 195, 185), (14, 3, 8)),      # left adrenal
    (9, (95, 120, 100), (15, 12, 12)),     # gallbladder
    (10, (200, 175, 150), (45, 6, 6)),     # oesophagus: thin tube
    (11, (140, 110, 200), (35, 30, 35)),   # stomach
    (12, (95, 150, 140), (20, 10, 30)),    # duodenum
]


def phantom_labels(centres_zyx: list[np.ndarray]) -> np.ndarray:
    """Label of each grid point (point sampling of the continuous phantom)."""
    z, y, x = centres_zyx
    out = np.zeros((len(z), len(y), len(x)), np.uint8)
    for label, c, r in PHANTOM:
        sl = []
        for axis, coords in enumerate((z, y, x)):
            hit = np.flatnonzero(np.abs(coords - c[axis]) < r[axis])
            sl.append(slice(hit[0], hit[-1] + 1) if hit.size else slice(0, 0))
        zz, yy, xx = np.meshgrid(z[sl[0]], y[sl[1]], x[sl[2]], indexing="ij", sparse=True)
        inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1
        out[tuple(sl)][inside] = label
    return out


def partial_volume_reference(shape: tuple[int, ...], spacing: tuple[float, ...], sub: int = 4) -> np.ndarray:
    """Each target voxel's majority label over sub³ points inside it (the partial-volume truth)."""
    n_labels = max(lab for lab, _, _ in PHANTOM) + 1
    fractions = np.zeros((n_labels, *shape), np.float32)
    offsets = (np.arange(sub) + 0.5) / sub
    for dz in offsets:
        for dy in offsets:
            for dx in offsets:
                centres = [(np.arange(shape[a]) + d) * spacing[a] for a, d in enumerate((dz, dy, dx))]
                lab = phantom_labels(centres)
                for value in np.unique(lab):
                    fractions[value] += lab == value
    return np.argmax(fractions, axis=0).astype(np.uint8)


def dice_per_label(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    out = {}
    for label, _, _ in PHANTOM:
        x, y = a == label, b == label
        denom = x.sum() + y.sum()
        out[label] = 2.0 * np.logical_and(x, y).sum() / denom if denom else 1.0
    return out


def bench_labels(_: argparse.Namespace) -> None:
    fov = (250.0, 300.0, 300.0)  # mm (z, y, x)
    src_spacing = (2.5, 0.8, 0.8)
    src_shape = tuple(round(f / s) for f, s in zip(fov, src_spacing, strict=True))
    src = phantom_labels([(np.arange(n) + 0.5) * s for n, s in zip(src_shape, src_spacing, strict=True)])
    print(f"label resampling: continuous 13-organ phantom, source {src_shape} at {src_spacing} mm (FLARE-like)")
    print(f"machine: {machine()}")
    targets = {"coarse 160^3 (downsample xy, upsample z)": (160, 160, 160),
               "fine 96x192x192": (96, 192, 192), "coarse 64^3 (strong downsample)": (64, 64, 64)}
    methods = {"nearest": {"method": "nearest"}, "linear+argmax": {"method": "linear", "vote": "argmax"},
               "linear+threshold (CSSN)": {"method": "linear", "vote": "threshold"}}
    for name, shape in targets.items():
        spacing = tuple(f / n for f, n in zip(fov, shape, strict=True))
        ref = partial_volume_reference(shape, spacing)
        print(f"\n{name}: target spacing {tuple(round(s, 3) for s in spacing)} mm; reference = partial-volume majority")
        print(f"  {'method':26s} {'mean Dice':>9s} {'min Dice':>9s} {'worst organ':>11s} {'lost':>4s} {'time s':>7s}")
        for mname, kw in methods.items():
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                out = pp.resample_labels(src, shape, **kw)
                times.append(time.perf_counter() - t0)
            d = dice_per_label(out, ref)
            worst = min(d, key=d.get)
            lost = sum(1 for lab in d if not (out == lab).any())
            print(f"  {mname:26s} {np.mean(list(d.values())):9.4f} {d[worst]:9.4f} {worst:>11d} {lost:4d} {np.median(times):7.3f}")


# segpipe vs nnU-Net --------------------------------------------------------------------------
def write_cases(out: Path, n: int, shape: tuple[int, int, int], synth: bool = False) -> list[str]:
    """Full-size FLARE-like cases: the bench phantom at exactly `shape` with FLARE-like per-case
    spacings (in-plane 0.7-0.9 mm, slices 2.5/3/4 mm), or pipeline.synth's "full" cases."""
    if synth:
        from pipeline.synth import write_flare_dataset

        write_flare_dataset(out, cases=n, size="full", seed=0, workers=2)
        return sorted(p.name.removesuffix("_0000.nii.gz") for p in (out / "images").glob("*_0000.nii.gz"))
    import SimpleITK as sitk

    from pipeline.image_io import write_image

    ids = []
    rng = np.random.default_rng(0)
    for i in range(n):
        inplane = float(rng.uniform(0.7, 0.9))
        spacing = (float(rng.choice([2.5, 3.0, 4.0])), inplane, inplane)  # (z, y, x)
        centres = [(np.arange(shape[a]) + 0.5) * spacing[a] + rng.uniform(-10, 10) for a in range(3)]
        label = phantom_labels(centres)
        _, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij", sparse=True)
        body = ((yy - shape[1] / 2) / (0.45 * shape[1])) ** 2 + ((xx - shape[2] / 2) / (0.47 * shape[2])) ** 2 < 1
        image = np.where(body, rng.normal(20, 25, shape), -1000).astype(np.int16)
        image[label > 0] += (label[label > 0] * 12).astype(np.int16)
        cid = f"FLARE22_Tr_{i + 1:04d}"
        for arr, path in ((image, out / "images" / f"{cid}_0000.nii.gz"), (label, out / "labels" / f"{cid}.nii.gz")):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(spacing[::-1])
            img.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))  # RAS-stored, as many FLARE files
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image(img, path)
        ids.append(cid)
    return ids


def to_nnunet_raw(flare: Path, raw: Path, ids: list[str], dataset_id: int) -> Path:
    from pipeline.tasks import FLARE22_LABELS

    base = raw / f"Dataset{dataset_id:03d}_SegpipeBench"
    (base / "imagesTr").mkdir(parents=True)
    (base / "labelsTr").mkdir()
    for cid in ids:  # links: the same bytes nnU-Net and segpipe read
        os.symlink(flare / "images" / f"{cid}_0000.nii.gz", base / "imagesTr" / f"{cid}_0000.nii.gz")
        os.symlink(flare / "labels" / f"{cid}.nii.gz", base / "labelsTr" / f"{cid}.nii.gz")
    labels = {"background": 0, **{name: i for i, name in FLARE22_LABELS.items()}}
    (base / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(ids), "file_ending": ".nii.gz"}, indent=1))
    return base


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    return time.perf_counter() - t0, proc.returncode, proc.stdout.decode(errors="replace")


def peak_rss_note() -> str:
    import resource

    return f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB"


def bench_speed(args: argparse.Namespace) -> None:
    shape = tuple(args.shape)
    tmp = Path(tempfile.mkdtemp(prefix="segpipe-bench-", dir=args.tmp))
    try:
        flare = tmp / "flare"
        t0 = time.perf_counter()
        ids = write_cases(flare, args.cases, shape, args.synth)  # type: ignore[arg-type]
        print(f"{len(ids)} synthetic FLARE cases {shape} (z,y,x) written in {time.perf_counter() - t0:.0f} s")
        print(f"machine: {machine()}")
        env = {**os.environ, "SEGPIPE_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        results = {}
        seg_cmd = [sys.executable, "-m", "pipeline", "prepare", "--data", str(flare), "--work", str(tmp / "work"),
                   "--workers", str(args.workers), "--config", "flare"]
        secs, rc, out = timed(seg_cmd, {**env, "PYTHONPATH": str(ROOT)})
        if rc != 0:
            print(out)
            raise SystemExit("segpipe prepare failed")
        rep = json.loads((tmp / "work" / "prepare_report.json").read_text())
        results["segpipe prepare"] = secs
        print(f"segpipe prepare --workers {args.workers}: {secs:.1f} s wall ({len(ids) / secs * 60:.2f} cases/min; "
              f"in-pool {rep['cases_per_minute']} cases/min), coarse 160^3 + fine 96x192x192 (+jitter margin) per case; "
              f"peak worker RSS {rep.get('worker_peak_rss_mib')} MiB")
        nn_bin = Path(args.nnunet_venv) / "bin"
        if not (nn_bin / "nnUNetv2_plan_and_preprocess").exists():
            print(f"nnU-Net not found in {args.nnunet_venv}: skipped (see the module docstring)")
        else:
            raw, pre, res = tmp / "nnUNet_raw", tmp / "nnUNet_preprocessed", tmp / "nnUNet_results"
            to_nnunet_raw(flare, raw, ids, 777)
            nn_env = {**env, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
                      "nnUNet_n_proc_DA": "2"}
            cmd = [str(nn_bin / "nnUNetv2_plan_and_preprocess"), "-d", "777", "-c", "3d_fullres",
                   "-np", str(args.workers), "-npfp", str(args.workers)]
            secs, rc, out = timed(cmd, nn_env)
            if rc != 0:
                print(out[-3000:])
                raise SystemExit("nnUNetv2_plan_and_preprocess failed")
            results["nnUNetv2_plan_and_preprocess"] = secs
            plans = json.loads((pre / "Dataset777_SegpipeBench" / "nnUNetPlans.json").read_text())
            fr = plans["configurations"]["3d_fullres"]
            print(f"nnUNetv2_plan_and_preprocess -c 3d_fullres -np {args.workers} -npfp {args.workers} "
                  f"(fingerprint extraction + planning + preprocessing): {secs:.1f} s wall "
                  f"({len(ids) / secs * 60:.2f} cases/min); target spacing {fr.get('spacing')}, "
                  f"median shape {fr.get('median_image_size_in_voxels')}")
        print(f"peak RSS of the largest process of either run: {peak_rss_note()}")
        print("\nsummary (cases/minute, higher is better):")
        for name, secs in results.items():
            print(f"  {name:32s} {len(ids) / secs * 60:7.2f}")
        print(f"machine after: {machine()}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# sample storage (issue #16) -------------------------------------------------------------------
def _encodings() -> dict[str, tuple]:
    """name → (write(path_stem, array, kind) -> path, read(path, kind, shape) -> float32/uint8 array)."""
    import zstandard

    from pipeline import sample_arrays as sa

    def npy(dtype):
        def write(stem, a, kind):
            path = stem.with_suffix(".npy")
            np.save(path, a if kind == "label" else a.astype(dtype), allow_pickle=False)
            return path
        return write, lambda path, kind, shape: np.array(np.load(path, mmap_mode="r", allow_pickle=False),
                                                          dtype=np.uint8 if kind == "label" else np.float32)

    def npz_write(stem, a, kind):
        path = stem.with_suffix(".npz")
        np.savez_compressed(path, a=a if kind == "label" else a.astype(np.float16))
        return path

    def f16_zstd_write(stem, a, kind):
        path = stem.with_suffix(".zst")
        raw = a.tobytes() if kind == "label" else sa._shuffle(a.astype("<f2"))
        path.write_bytes(zstandard.ZstdCompressor(level=sa.ZSTD_LEVEL).compress(raw))
        return path

    def f16_zstd_read(path, kind, shape):
        raw = zstandard.ZstdDecompressor().decompress(path.read_bytes())
        if kind == "label":
            return np.frombuffer(raw, np.uint8).reshape(shape).copy()
        return sa._unshuffle(raw, int(np.prod(shape))).view("<f2").reshape(shape).astype(np.float32)

    infos: dict[Path, dict] = {}

    def chosen_write(stem, a, kind):
        payload, info = sa.encode(a, kind, "zstd")
        path = stem.with_suffix(".zst")
        with open(path, "wb") as fh:
            sa.write(fh, payload)
        infos[path] = info
        return path

    return {
        "float32 .npy (format 1: before)": npy(np.float32),
        "float16 .npy (sample_storage: npy)": npy(np.float16),
        "float16 npz deflate": (npz_write, lambda path, kind, shape: np.load(path, allow_pickle=False)["a"].astype(
            np.uint8 if kind == "label" else np.float32)),
        "float16 shuffled + zstd": (f16_zstd_write, f16_zstd_read),
        "int16 shuffled + zstd (default: after)": (chosen_write, lambda path, kind, shape: sa.read(path, infos[path])),
    }


def bench_storage(args: argparse.Namespace) -> None:
    from loader import drop_cache  # bench/loader.py

    from pipeline.samples import SampleStore

    tmp = Path(tempfile.mkdtemp(prefix="segpipe-storage-", dir=args.tmp))
    try:
        work = args.work
        if work is None:
            from pipeline.synth import write_flare_dataset

            write_flare_dataset(tmp / "data", cases=args.cases, unlabeled=args.cases, size="small", seed=0, workers=2)
            work = tmp / "work"
            subprocess.run([sys.executable, "-m", "pipeline", "prepare", "--data", str(tmp / "data"), "--work", str(work),
                            "--config", "flare", "--workers", "2"], check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "SEGPIPE_PROGRESS": "0"})
        store = SampleStore(work)
        ids = store.case_ids("all")
        arrays = {(cid, stage, kind): getattr(s, kind) for cid in ids for stage in ("coarse", "fine")
                  for s in [store.load_stored(cid, stage, mmap=False)] for kind in ("image", "label")
                  if getattr(s, kind) is not None}
        arrays = {k: np.array(v, dtype=np.float32 if k[2] == "image" else np.uint8) for k, v in arrays.items()}
        labeled = set(store.case_ids("labeled"))
        print(f"sample storage: {len(ids)} prepared cases ({len(labeled)} labeled) of {work}, config "
              f"coarse {store.config.coarse_size}, fine {store.config.fine_size} + {store.config.fine_jitter_mm} mm jitter")
        print(f"machine: {machine()}")
        print(f"  {'encoding':40s} {'MB/case':>8s} {'labeled':>8s} {'unlab.':>7s} {'max':>6s}   "
              f"{'warm ms':>8s} {'cold ms':>8s} {'samples/s warm':>14s}  (one coarse or fine sample: image + label)")
        rng = np.random.default_rng(0)
        for name, (write, read) in _encodings().items():
            folder = tmp / name.split()[0] / name.replace(" ", "_").replace("/", "_")
            folder.mkdir(parents=True)
            paths = {k: write(folder / f"{k[0]}_{k[1]}_{k[2]}", a, k[2]) for k, a in arrays.items()}
            os.sync()  # dirty pages cannot be dropped for the cold reads
            per_case = {cid: sum(p.stat().st_size for k, p in paths.items() if k[0] == cid) for cid in ids}
            lab = [b for c, b in per_case.items() if c in labeled]
            unl = [b for c, b in per_case.items() if c not in labeled]
            samples = [(cid, stage) for cid in ids for stage in ("coarse", "fine")]
            pick = [samples[int(i)] for i in rng.integers(0, len(samples), args.reads)]

            def read_sample(i, cold=False, read=read, paths=paths, pick=pick):
                keys = [k for k in ((*pick[i], "image"), (*pick[i], "label")) if k in paths]
                if cold:
                    drop_cache([paths[k] for k in keys])
                t0 = time.perf_counter()
                for k in keys:
                    read(paths[k], k[2], arrays[k].shape)
                return time.perf_counter() - t0

            read_sample(0)
            warm = statistics.median(read_sample(i) for i in range(args.reads))
            cold = statistics.median(read_sample(i, cold=True) for i in range(args.reads))
            mean = statistics.mean(per_case.values())
            print(f"  {name:40s} {mean / 1e6:8.2f} {statistics.mean(lab) / 1e6 if lab else 0:8.2f} "
                  f"{statistics.mean(unl) / 1e6 if unl else 0:7.2f} {max(per_case.values()) / 1e6:6.2f}   "
                  f"{warm * 1000:8.1f} {cold * 1000:8.1f} {1 / warm:14.1f}")
            shutil.rmtree(folder)
        print(f"machine after: {machine()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("labels", help="label resampling accuracy and speed")
    speed = sub.add_parser("speed", help="segpipe prepare vs nnUNetv2_plan_and_preprocess")
    speed.add_argument("--cases", type=int, default=5)
    speed.add_argument("--shape", type=int, nargs=3, default=[100, 512, 512], metavar=("Z", "Y", "X"))
    speed.add_argument("--workers", type=int, default=2)
    speed.add_argument("--nnunet-venv", default="/tmp/nnunet-venv")
    speed.add_argument("--tmp", default=None, help="scratch folder (default: system temp)")
    speed.add_argument("--keep", action="store_true")
    speed.add_argument("--synth", action="store_true", help="pipeline.synth full-size cases instead of the phantom")
    storage = sub.add_parser("storage", help="bytes per prepared case and read speed of each sample encoding")
    storage.add_argument("--work", type=Path, default=None, help="a prepared work folder (default: synth small cases)")
    storage.add_argument("--cases", type=int, default=10, help="labeled and as many unlabeled synth cases")
    storage.add_argument("--reads", type=int, default=30)
    storage.add_argument("--tmp", default=None)
    args = parser.parse_args()
    {"labels": bench_labels, "speed": bench_speed, "storage": bench_storage}[args.what](args)


if __name__ == "__main__":
    main()
