"""Tiny hand-made raw data sets in every layout prepare reads (tests of issue #3).

Volumes are small (tens of voxels per axis) so a whole prepare run takes a second or two; the
anatomy is crude on purpose: what is tested is layout handling, geometry and bookkeeping.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.image_io import write_image

LPS = np.eye(3)
RAS = np.diag([-1.0, -1.0, 1.0])


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE_PERMUTED = rotation(0.2, -0.15, 0.3) @ np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)


def to_image(array: np.ndarray, spacing=(0.9, 0.9, 2.5), direction=LPS, origin=(-20.0, 15.0, 100.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    return image


def save(array: np.ndarray, path: Path, **geometry) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(to_image(array, **geometry), path)
    return path


def ct_case(shape=(20, 40, 44), seed=0, labels=(1, 2, 3, 13)) -> tuple[np.ndarray, np.ndarray]:
    """int16 HU volume (air outside an elliptic body) and a uint8 organ label map."""
    rng = np.random.default_rng(seed)
    _, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    cy, cx = shape[1] / 2, shape[2] / 2
    body = ((y - cy) / (0.42 * shape[1])) ** 2 + ((x - cx) / (0.45 * shape[2])) ** 2 < 1
    image = np.where(body, rng.normal(30, 15, shape), -1000).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    off = int(rng.integers(0, 3))
    boxes = {
        1: (slice(4 + off, 14 + off), slice(int(cy) - 8, int(cy) + 2), slice(int(cx) - 12, int(cx) - 2)),
        2: (slice(6, 12), slice(int(cy) + 3, int(cy) + 8), slice(int(cx) - 10, int(cx) - 5)),
        3: (slice(5, 11), slice(int(cy) - 6, int(cy) - 1), slice(int(cx) + 4, int(cx) + 10)),
        13: (slice(7, 13), slice(int(cy) + 3, int(cy) + 8), slice(int(cx) + 5, int(cx) + 10)),
        5: (slice(2, 18), slice(int(cy) + 1, int(cy) + 2), slice(int(cx), int(cx) + 1)),  # thin vessel
    }
    for value in labels:
        label[boxes[value]] = value
        image[boxes[value]] += np.int16(40 + 10 * value)
    return image, label


def write_flare(root: Path, *, labeled=3, unlabeled=2, validation=0, naming="synth", shape=(20, 40, 44),
                direction=LPS, spacing=(0.9, 0.9, 2.5)) -> Path:
    """FLARE22-like folders; naming: synth (images/labels/unlabeled/validation),
    release (FLARE22_LabeledCase50/{images,labels}, FLARE22_UnlabeledCase1-1000), cssn
    (train_images/train_mask/trainu_images/val_images)."""
    dirs = {
        "synth": ("images", "labels", "unlabeled", "validation"),
        "release": ("FLARE22_LabeledCase50/images", "FLARE22_LabeledCase50/labels", "FLARE22_UnlabeledCase1-1000",
                    "FLARE22_ValidationCases"),
        "cssn": ("train_images", "train_mask", "trainu_images", "val_images"),
    }[naming]
    geo = {"spacing": spacing, "direction": direction}
    for i in range(labeled):
        image, label = ct_case(shape, seed=i)
        save(image, root / dirs[0] / f"FLARE22_Tr_{i + 1:04d}_0000.nii.gz", **geo)
        save(label, root / dirs[1] / f"FLARE22_Tr_{i + 1:04d}.nii.gz", **geo)
    for i in range(unlabeled):
        image, _ = ct_case(shape, seed=100 + i)
        save(image, root / dirs[2] / f"FLARE22_Unl_{i + 1:04d}_0000.nii.gz", **geo)
    for i in range(validation):
        image, _ = ct_case(shape, seed=200 + i)
        save(image, root / dirs[3] / f"FLARE22_Val_{i + 1:04d}_0000.nii.gz", **geo)
    return root


BRATS_FILE_TAGS = {
    "legacy": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"},
    "2023": {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "seg": "-seg"},
}


def brats_case(shape=(24, 28, 26), seed=0, legacy=False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four float32 modalities (0 outside an ellipsoidal brain) and a tumour label (raw convention)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    c = [s / 2 for s in shape]
    brain = sum(((g - ci) / (0.4 * s)) ** 2 for g, ci, s in zip((z, y, x), c, shape, strict=True)) < 1
    tumour = sum(((g - ci - 2) / (0.15 * s)) ** 2 for g, ci, s in zip((z, y, x), c, shape, strict=True))
    label = np.zeros(shape, np.uint8)
    label[tumour < 1.0] = 2  # edema
    label[tumour < 0.5] = 4 if legacy else 3  # enhancing
    label[tumour < 0.2] = 1  # necrosis
    mods = {}
    for k, m in enumerate(("flair", "t1", "t1ce", "t2")):
        v = rng.normal(100 + 50 * k, 10, shape) + 30 * (label > 0)
        mods[m] = np.where(brain, v, 0).astype(np.float32)
    return mods, label


def write_brats(root: Path, cases: list[tuple[str, str, tuple[str, ...], bool]], shape=(24, 28, 26)) -> Path:
    """cases: (case id, 'legacy'|'2023', modalities present, labeled)."""
    for i, (case_id, convention, present, labeled) in enumerate(cases):
        mods, label = brats_case(shape, seed=i, legacy=convention == "legacy")
        tags = BRATS_FILE_TAGS[convention]
        geo = {"spacing": (1.0, 1.0, 1.0), "direction": np.diag([-1.0, -1.0, 1.0]), "origin": (0.0, -239.0, 0.0)}
        for m in present:
            save(mods[m], root / case_id / f"{case_id}{tags[m]}.nii.gz", **geo)
        if labeled:
            save(label, root / case_id / f"{case_id}{tags['seg']}.nii.gz", **geo)
    return root


def write_nnunet(root: Path, *, task="flare", labeled=3, test=1, shape=(20, 40, 44)) -> Path:
    base = root / "Dataset501_Test"
    if task == "flare":
        channels = {"0": "CT"}
        labels = {"background": 0, "liver": 1, "right_kidney": 2, "spleen": 3, "left_kidney": 13}
    else:
        channels = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
        labels = {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3}
    (base / "imagesTr").mkdir(parents=True, exist_ok=True)
    (base / "dataset.json").write_text(json.dumps({
        "channel_names": channels, "labels": labels, "numTraining": labeled, "file_ending": ".nii.gz"}))
    for i in range(labeled + test):
        sub = "imagesTr" if i < labeled else "imagesTs"
        case = f"case_{i:03d}"
        if task == "flare":
            image, label = ct_case(shape, seed=i)
            save(image, base / sub / f"{case}_0000.nii.gz")
        else:
            mods, label = brats_case(seed=i)
            for ch, name in channels.items():
                key = {"T1": "t1", "T1ce": "t1ce", "T2": "t2", "FLAIR": "flair"}[name]
                save(mods[key], base / sub / f"{case}_{int(ch):04d}.nii.gz")
        if i < labeled:
            save(label, base / "labelsTr" / f"{case}.nii.gz")
    return root


def write_flat(root: Path, *, n=3, labeled=1, suffix=".mha", shape=(20, 40, 44)) -> Path:
    for i in range(n):
        image, label = ct_case(shape, seed=i)
        save(image, root / f"scan-{i:02d}{suffix}")
        if i < labeled:
            save(label, root / "labels" / f"scan-{i:02d}{suffix}")
    return root


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """relative path → (size, mtime_ns) of every file and folder, to prove nothing was written."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


SMALL = ["--set", "prepare.coarse_size=[16,24,24]", "--set", "prepare.fine_size=[12,24,24]",
         "--set", "prepare.fine_jitter_mm=6"]
