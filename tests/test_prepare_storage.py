"""Sample format 2 (issue #16): precision of the encodings, size per case at the default config,
format 1 work folders still read, newer or corrupt ones refused with a one-line reason, and the
disk-space projection that stops a run the disk cannot hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from prepare_fixtures import write_flare

from data_prepare import runner
from data_prepare.store import SAMPLES_DIRNAME
from pipeline import sample_arrays
from pipeline.case_index import CaseIndex
from pipeline.cli import main
from pipeline.config import PrepareSection
from pipeline.errors import SegpipeError
from pipeline.samples import SampleStore

SMALL = ["--set", "prepare.coarse_size=[24,32,32]", "--set", "prepare.fine_size=[16,32,32]"]


def _roundtrip(tmp_path: Path, array: np.ndarray, kind: str, storage: str, mmap: bool = False) -> tuple[np.ndarray, dict]:
    payload, info = sample_arrays.encode(array, kind, storage)  # type: ignore[arg-type]
    path = tmp_path / f"a{sample_arrays.SUFFIX[storage]}"
    with open(path, "wb") as fh:
        sample_arrays.write(fh, payload)
    return sample_arrays.read(path, info, mmap=mmap), info


def test_encodings_keep_normalised_intensities_below_source_precision(tmp_path):
    rng = np.random.default_rng(0)
    # a z-scored CT: std 150 HU, clipped at ±325 HU around a mean of 40 HU → z in [-2.4, 1.9]
    hu = np.clip(rng.normal(40, 150, (1, 20, 30, 40)), -325, 325)
    image = ((hu - 40) / 150).astype(np.float32)
    out, info = _roundtrip(tmp_path, image, "image", "zstd")
    assert out.dtype == np.float32 and out.shape == image.shape and info["scale"] == 2.0**-10
    assert np.abs(out - image).max() <= 2.0**-11 + 1e-7  # half a step: 0.07 HU at std 150
    assert np.abs(out - image).max() * 150 < 0.1  # in HU
    half, info16 = _roundtrip(tmp_path, image, "image", "npy", mmap=True)
    assert info16["dtype"] == "float16" and isinstance(half, np.memmap) and half.dtype == np.float16
    assert np.abs(np.array(half, dtype=np.float32) - image).max() * 150 < 0.2  # float16 below 1 HU as well
    # values beyond ±32 (an MRI hyperintensity) double the step instead of wrapping around
    wide = image * 40
    out, info = _roundtrip(tmp_path, wide, "image", "zstd")
    assert info["scale"] == 2.0**-8 and np.abs(out - wide).max() <= 2.0**-9 + 1e-6
    labels = rng.integers(0, 14, (20, 30, 40)).astype(np.uint8)
    for storage in ("zstd", "npy"):
        got, _ = _roundtrip(tmp_path, labels, "label", storage)
        assert got.dtype == np.uint8 and np.array_equal(got, labels)
    with pytest.raises(SegpipeError, match="NaN"):
        sample_arrays.encode(np.full((1, 2, 2, 2), np.nan, np.float32), "image", "zstd")


def test_default_config_is_at_most_8_mb_per_case(tmp_path):
    """Done-when of issue #16: coarse 64×128×128 + fine 96×192×192 (+ jitter margin) per case."""
    from pipeline.synth import write_flare_dataset

    data, work = tmp_path / "data", tmp_path / "work"
    write_flare_dataset(data, cases=1, unlabeled=1, size="small", seed=5)
    assert main(["prepare", "--data", str(data), "--work", str(work), "--workers", "2"]) == 0
    report = json.loads((work / "prepare_report.json").read_text())
    assert report["config"]["coarse_size"] == [64, 128, 128] and report["config"]["fine_size"] == [96, 192, 192]
    on_disk = sum(p.stat().st_size for p in (work / SAMPLES_DIRNAME).rglob("*") if p.is_file())
    assert report["sample_bytes"] == report["sample_bytes_written"] == on_disk
    assert on_disk / 2 <= 8e6, f"{on_disk / 2 / 1e6:.1f} MB per case"
    store = SampleStore(work)
    sample = store.load(store.case_ids("labeled")[0], "coarse")
    assert sample.image.shape == (1, 64, 128, 128) and sample.image.dtype == np.float32


def test_format_1_folders_read_newer_and_corrupt_ones_are_refused(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    write_flare(data, labeled=2, unlabeled=0)
    assert main(["prepare", "--data", str(data), "--work", str(work), "--workers", "1", *SMALL]) == 0
    current = SampleStore(work)
    cid = current.case_ids("labeled")[0]
    expected = {s: current.load(cid, s) for s in ("coarse", "fine")}

    # rewrite the folder as format 1 wrote it: float32/uint8 .npy, records without codec/bytes
    old = tmp_path / "old"
    shutil.copytree(work, old)
    with CaseIndex(old, writable=True) as index, index.write() as txn:
        for case_id, rec in index.records().items():
            for stage in ("coarse", "fine"):
                for kind in ("image", "label"):
                    info = rec[stage][kind]
                    array = sample_arrays.read(old / info["path"], info, mmap=False)
                    (old / info["path"]).unlink()
                    rel = f"samples/{stage}/{case_id}_{kind}.npy"
                    np.save(old / rel, array, allow_pickle=False)
                    rec[stage][kind] = {"path": rel, "shape": list(array.shape), "dtype": str(array.dtype)}
            txn.put(rec)
        meta = txn.get_meta("prepare")
        del meta["sample_format"]
        txn.set_meta("prepare", meta)
    legacy = SampleStore(old)
    for stage, want in expected.items():
        got = legacy.load(cid, stage)
        assert isinstance(got.image, np.memmap) and got.image.dtype == np.float32
        assert np.array_equal(got.image, want.image) and np.array_equal(got.label, want.label)

    # a format this segpipe does not know: refused at construction, one line, what to do
    with CaseIndex(old, writable=True) as index:
        index.set_meta("prepare", {**index.get_meta("prepare"), "sample_format": sample_arrays.SAMPLE_FORMAT + 1})
    with pytest.raises(SegpipeError, match=r"rerun `segpipe prepare`") as exc:
        SampleStore(old)
    assert "\n" not in str(exc.value)

    # a truncated array: the error names the file and the remedy
    path = work / current.record(cid)["coarse"]["image"]["path"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SegpipeError, match=rf"{path.name}: corrupt sample array .*rerun `segpipe prepare`"):
        current.load(cid, "coarse")


def test_npy_storage_is_memory_mapped_and_matches_zstd(tmp_path):
    data = tmp_path / "data"
    write_flare(data, labeled=1, unlabeled=0)
    stores = {}
    for storage in ("zstd", "npy"):
        work = tmp_path / storage
        assert main(["prepare", "--data", str(data), "--work", str(work), "--workers", "1", *SMALL,
                     "--set", f"prepare.sample_storage={storage}"]) == 0
        stores[storage] = SampleStore(work)
    cid = stores["npy"].case_ids("labeled")[0]
    mapped = stores["npy"].load(cid, "fine")
    assert isinstance(mapped.image, np.memmap) and mapped.image.dtype == np.float16
    assert stores["npy"].load(cid, "fine", mmap=False).image.dtype == np.float32
    packed = stores["zstd"].load(cid, "fine")
    # float16 keeps 11 significant bits, int16 a step of 2^-10: within both errors of each other
    assert np.allclose(np.array(mapped.image, dtype=np.float32), packed.image, rtol=2.0**-11, atol=2.0**-11)
    assert np.array_equal(mapped.label, packed.label)
    assert stores["npy"].fine_crop(cid, jitter_mm=5, rng=np.random.default_rng(0)).image.dtype == np.float32


def test_a_run_the_disk_cannot_hold_stops_early_and_resumes(tmp_path, monkeypatch):
    data, work = tmp_path / "data", tmp_path / "work"
    write_flare(data, labeled=3, unlabeled=0)
    cfg = PrepareSection.model_validate({"coarse_size": [24, 32, 32], "fine_size": [16, 32, 32]})
    real = shutil.disk_usage
    monkeypatch.setattr(runner, "SIZE_PROBE_CASES", 1)
    monkeypatch.setattr(runner.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(SegpipeError, match=r"remaining 2 case\(s\) need ~.* MB .* has 0.0 MB free"):
        runner.run_prepare(data, work, cfg, workers=1)
    with CaseIndex(work) as index:
        assert len(index) == 1  # the measured case is kept
    # rerun: the projection comes from the case on disk, before any work
    with pytest.raises(SegpipeError, match=r"measured on 1 prepared case"):
        runner.run_prepare(data, work, cfg, workers=1)
    monkeypatch.setattr(runner.shutil, "disk_usage", real)
    outcome = runner.run_prepare(data, work, cfg, workers=1)
    assert outcome.report["prepared"] == 2 and outcome.report["skipped"] == 1
    assert outcome.report["sample_bytes"] > outcome.report["sample_bytes_written"] > 0
