"""Read throughput of prepared samples (issue #3). Prints figures; asserts nothing.

    python bench/loader.py                 # SampleStore and the trainer's DataLoader: samples per second
    python bench/loader.py --storage       # + the same arrays as LMDB blobs: why samples are .npy files
    python bench/loader.py --step          # + one CPU training step of the coarse and fine models, for scale
    python bench/loader.py --work WORK     # use an existing prepared work folder
    python bench/loader.py --before        # + issue #16's starting point first: float32 .npy samples
                                           #   (sample format 1) at the former 160³ coarse grid

Without --work, a few cases are prepared with the FLARE config (coarse 64×128×128, fine 96×192×192 +
jitter margin: production sample sizes) from 100×256×256 phantom volumes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.samples import SampleStore  # noqa: E402


def machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} cores visible, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (1/5/15 min)"


def drop_cache(paths) -> None:
    """Ask the kernel to forget these files' pages (no root needed), for cold reads."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def rate(fn, n: int) -> tuple[float, float]:
    """(samples/s from the median time, median ms)."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return 1.0 / med, med * 1000


def make_work(tmp: Path, cases: int, name: str = "work", sets: tuple[str, ...] = ()) -> Path:
    sys.path.insert(0, str(ROOT / "bench"))
    import subprocess

    from prepare import write_cases  # bench/prepare.py

    data, work = tmp / "data", tmp / name
    if not data.exists():
        write_cases(data, cases, (100, 256, 256))
    subprocess.run([sys.executable, "-m", "pipeline", "prepare", "--data", str(data), "--work", str(work),
                    "--config", "flare", "--workers", "2", *(x for v in sets for x in ("--set", v))], check=True,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "SEGPIPE_PROGRESS": "0"})
    return work


def as_format_1(work: Path, dest: Path) -> Path:
    """A copy of `work` as sample format 1 stored it (float32/uint8 .npy, records without codec),
    which SampleStore still reads: the starting point the int16 + zstd format is measured against."""
    from pipeline import sample_arrays
    from pipeline.case_index import CaseIndex

    shutil.copytree(work, dest)
    with CaseIndex(dest, writable=True) as index, index.write() as txn:
        for case_id, rec in index.records().items():
            for stage in ("coarse", "fine"):
                for kind in ("image", "label"):
                    info = rec[stage].get(kind)
                    if not info:
                        continue
                    array = sample_arrays.read(dest / info["path"], info, mmap=False)
                    (dest / info["path"]).unlink()
                    rel = f"samples/{stage}/{case_id}_{kind}.npy"
                    np.save(dest / rel, array, allow_pickle=False)
                    rec[stage][kind] = {"path": rel, "shape": list(array.shape), "dtype": str(array.dtype)}
            txn.put(rec)
        meta = txn.get_meta("prepare")
        meta.pop("sample_format", None)
        txn.set_meta("prepare", meta)
    return dest


def bench_store(store: SampleStore, n: int) -> None:
    ids = store.case_ids("labeled") + store.case_ids("unlabeled")
    rng = np.random.default_rng(0)
    pick = [ids[int(i)] for i in rng.integers(0, len(ids), n)]
    files = [store.work / p for c in ids for s in ("coarse", "fine") for k in ("image", "label")
             if k in store.record(c)[s] for p in [store.record(c)[s][k]["path"]]]
    c0 = store.load(ids[0], "coarse")
    f0 = store.load_stored(ids[0], "fine")
    info = store.record(ids[0])["coarse"]["image"]
    print(f"sample sizes: coarse {tuple(c0.image.shape)}, fine stored {tuple(f0.image.shape)} → nominal "
          f"{tuple(store.load(ids[0], 'fine').image.shape)}; stored as {info.get('dtype')} {info.get('codec', 'npy')}, "
          f"{sum(p.stat().st_size for p in files) / len(ids) / 1e6:.2f} MB per case on disk")

    def read(stage):  # what a consumer does: float32 image, uint8 label
        def fn(i):
            s = store.load(pick[i % n], stage)
            np.array(s.image, dtype=np.float32), None if s.label is None else np.array(s.label)
        return fn

    def jitter(i):
        store.fine_crop(pick[i], margin_mm=(-40 / 3, 40), rng=rng)

    print("\nSampleStore, one process, warm page cache (median over random cases):")
    for name, fn in (("coarse load", read("coarse")), ("fine load (nominal crop)", read("fine")),
                     ("fine_crop, CSSN jitter U(-13.3, 40) mm + resize", jitter)):
        fn(0)
        r, ms = rate(fn, n)
        print(f"  {name:55s} {r:7.1f} samples/s  ({ms:.1f} ms)")
    print("SampleStore, cold page cache (posix_fadvise DONTNEED before each read):")
    os.sync()  # dirty pages cannot be dropped
    for name, fn in (("coarse load", read("coarse")), ("fine load (nominal crop)", read("fine"))):
        def cold(i, fn=fn):
            drop_cache(files)
            fn(i)
        r, ms = rate(cold, max(5, n // 4))
        print(f"  {name:55s} {r:7.1f} samples/s  ({ms:.1f} ms)")

    import torch

    from pipeline.config import load_config
    from pipeline.training.data import PatchDataset

    augment = load_config("flare").train.augment
    labeled = store.case_ids("labeled")
    items = [(labeled[i % len(labeled)], i) for i in range(4 * len(labeled))]

    def load_coarse(cid, seed):
        return store.load(cid, "coarse")

    def load_fine(cid, seed):  # fine_seg/train.py's CSSN ROI jitter
        return store.fine_crop(cid, margin_mm=(-40 / 3, 40), rng=np.random.default_rng(seed))

    for stage, load in (("coarse", load_coarse), ("fine", load_fine)):
        for aug_name, aug in (("no augmentation", augment.model_copy(update={"enabled": False})),
                ("flare augmentation", augment)):
            ds = PatchDataset(items, load, patch=None, fg_p=0.0, augment_cfg=aug, num_classes=14, labeled=True)
            loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True)
            next(iter(loader))  # start the workers
            t0 = time.perf_counter()
            batches = sum(1 for _ in loader)
            secs = time.perf_counter() - t0
            print(f"trainer DataLoader {stage:6s} (PatchDataset, 2 workers, batch 2, {aug_name}): "
                  f"{2 * batches / secs:7.1f} samples/s ({batches} batches)")


def bench_storage(store: SampleStore, tmp: Path, n: int) -> None:
    import lmdb

    ids = store.case_ids("labeled") + store.case_ids("unlabeled")
    env_path = tmp / "blobs.lmdb"
    arrays = {(c, s): np.array(store.load_stored(c, s).image, dtype=np.float32) for c in ids for s in ("coarse", "fine")}
    def open_env():
        return lmdb.open(str(env_path), map_size=1 << 34, sync=True, readahead=False)

    env = open_env()
    t_lmdb, t_npy = [], []
    for (c, s), a in arrays.items():
        t0 = time.perf_counter()
        with env.begin(write=True) as txn:
            txn.put(f"{c}/{s}".encode(), a.tobytes())
        t_lmdb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        path = tmp / f"samples/{s}/{c}_image.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:  # as format 1 wrote samples: float32 .npy, fsync'd
            np.save(fh, a, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        t_npy.append(time.perf_counter() - t0)
    mib = statistics.mean(a.nbytes for a in arrays.values()) / 2**20
    print(f"\nstorage: {len(arrays)} arrays, mean {mib:.1f} MiB; writes (fsync'd / synced commit), median:")
    print(f"  .npy temp+fsync+rename   {statistics.median(t_npy) * 1000:7.1f} ms")
    print(f"  LMDB put + commit        {statistics.median(t_lmdb) * 1000:7.1f} ms   (one writer at a time for all workers)")
    rng = np.random.default_rng(1)
    keys = list(arrays)
    pick = [keys[int(i)] for i in rng.integers(0, len(keys), n)]
    shapes = {k: a.shape for k, a in arrays.items()}

    def from_lmdb(i):
        with envs[0].begin(buffers=True) as txn:
            buf = txn.get(f"{pick[i][0]}/{pick[i][1]}".encode())
            np.frombuffer(buf, np.float32).reshape(shapes[pick[i]]).copy()

    def from_npy(i):
        np.array(np.load(tmp / f"samples/{pick[i][1]}/{pick[i][0]}_image.npy", mmap_mode="r", allow_pickle=False))

    def crop_lmdb(i):  # a fine crop: LMDB hands out the whole value; slice it
        c = pick[i][0]
        with envs[0].begin(buffers=True) as txn:
            a = np.frombuffer(txn.get(f"{c}/fine".encode()), np.float32).reshape(shapes[(c, "fine")])
            a[:, 4:-4, 8:-8, 8:-8].copy()

    def crop_npy(i):
        c = pick[i][0]
        a = np.load(tmp / f"samples/fine/{c}_image.npy", mmap_mode="r", allow_pickle=False)
        np.array(a[:, 4:-4, 8:-8, 8:-8])

    npy_files = [tmp / f"samples/{s}/{c}_image.npy" for c, s in keys]
    env.close()
    envs = [open_env()]
    print("random whole-array reads, median:")
    for name, fn, cold_files in (("LMDB blob → numpy", from_lmdb, [env_path / "data.mdb"]),
                                 (".npy memory map → numpy", from_npy, npy_files),
                                 ("LMDB fine crop (slice of the blob)", crop_lmdb, [env_path / "data.mdb"]),
                                 (".npy fine crop (slice of the memmap)", crop_npy, npy_files)):
        warm_r, warm_ms = rate(fn, n)

        def cold(i, fn=fn, cold_files=cold_files):
            if cold_files[0].name == "data.mdb":  # mapped pages stay cached while the env is open
                envs[0].close()
                drop_cache(cold_files)
                envs[0] = open_env()
            else:
                drop_cache(cold_files)
            fn(i)

        cold_r, cold_ms = rate(cold, max(5, n // 4))
        print(f"  {name:38s} warm {warm_r:7.1f}/s ({warm_ms:6.1f} ms)   cold {cold_r:7.1f}/s ({cold_ms:6.1f} ms)")
    size_lmdb = (env_path / "data.mdb").stat().st_size
    size_npy = sum(p.stat().st_size for p in npy_files)
    print(f"  on disk: LMDB {size_lmdb / 2**20:.0f} MiB, .npy {size_npy / 2**20:.0f} MiB")
    envs[0].close()


def bench_step(store: SampleStore) -> None:
    import torch

    from coarse_seg.model import build_model as build_coarse
    from fine_seg import build_model as build_fine

    torch.set_num_threads(os.cpu_count() or 1)
    cid = store.case_ids("labeled")[0]
    for stage, build in (("fine", build_fine), ("coarse", build_coarse)):
        s = store.load(cid, stage)
        model = build({"in_channels": 1, "num_classes": 14})
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        x = torch.from_numpy(np.array(s.image))[None]
        y = torch.from_numpy(np.array(s.label)).long()[None]
        times = []
        for _ in range(1):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        print(f"CPU training step, {stage} model, batch 1 of {tuple(x.shape[2:])}: {min(times):.2f} s "
              f"({torch.get_num_threads()} threads)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--reads", type=int, default=40)
    parser.add_argument("--storage", action="store_true")
    parser.add_argument("--step", action="store_true")
    parser.add_argument("--before", action="store_true",
                        help="first time float32 .npy samples at a 160³ coarse grid (issue #16's starting point)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="segpipe-loader-"))
    try:
        print(f"machine: {machine()}")
        if args.before:
            old = make_work(tmp, args.cases, "work160", ("prepare.coarse_size=[160,160,160]",))
            print("\n=== before: sample format 1 (float32 .npy), coarse 160³")
            bench_store(SampleStore(as_format_1(old, tmp / "before")), args.reads)
            print("\n=== now: the default config (int16 + zstd, coarse 64×128×128)")
        work = args.work or make_work(tmp, args.cases)
        store = SampleStore(work)
        bench_store(store, args.reads)
        if args.storage:
            bench_storage(store, tmp, args.reads)
        if args.step:
            bench_step(store)
        print(f"machine after: {machine()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
