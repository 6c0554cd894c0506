"""Layout detection and case discovery: a raw data folder → a list of CaseSource.

Only file *names* are read here (and nnU-Net's dataset.json); images are opened later, in the
workers. Problems that belong to one case (a label without image, an unsafe id, a duplicate)
become per-case failures, never a crash of the whole discovery.

What is detected (`--layout auto`, first match wins):
1. nnunet: DIR/dataset.json + DIR/imagesTr (or DIR holds exactly one such `Dataset*` folder).
   `imagesTr/<case>_<XXXX><ending>` (channel XXXX), `labelsTr/<case><ending>`, optional
   `imagesTs/` (→ test). Channels are matched to modalities by their dataset.json names.
2. brats: case folders (directly under DIR or one level deeper) holding files named
   `<anything>_{flair,t1,t1ce,t2,seg}.nii[.gz]` (legacy ≤2021) or
   `<anything>-{t2f,t1n,t1c,t2w,seg}.nii[.gz]` (2023+). Any subset of modalities may be
   missing. A case without seg is unlabeled (test if its path contains "val").
3. flare: folders (up to 3 levels deep) holding images, classified by their path relative to
   DIR, case-insensitive: any part containing "unlabel" or starting with "trainu" → unlabeled
   pool; else any part containing "val" or "test" → validation (test) images, or their labels when the
   last part contains label/mask/seg/gt; else a last part containing label/mask/seg/gt →
   training labels; any other folder with images → training images. Images are
   `<id>_0000.nii.gz` (the suffix is stripped; plain `<id>.nii.gz` is accepted too), labels
   `<id>.nii.gz` in the sibling labels folder. Covers the FLARE22 release
   (`FLARE22_LabeledCase50/{images,labels}`, `FLARE22_UnlabeledCase1-1000/`), SemiSeg-CSSN's
   `train_images/train_mask/trainu_images/val_images` and segpipe synth's layout.
4. flat: image files (.mha, .nii.gz, .nii, .nrrd) directly in DIR, one case per file
   (`<id>_XXXX` suffixes are channels of one case), optional labels in DIR/labels or DIR/masks.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.brats_files import brats_case_dirs, brats_tag, image_files, subdirs, walk_dirs
from pipeline.errors import SegpipeError
from pipeline.fsutil import check_case_id
from pipeline.image_io import strip_image_suffix
from pipeline.tasks import (
    BRATS_LEGACY_TO_2023,
    TaskSpec,
    get_task,
)

LAYOUTS = ("flare", "brats", "nnunet", "flat")
GROUPS = ("labeled", "unlabeled", "test")
_CHANNEL = re.compile(r"^(?P<id>.+)_(?P<ch>\d{4})$")
_LABEL_WORDS = ("label", "mask", "seg", "gt")
_MAX_DEPTH = 3

# dataset.json channel names / file tags → segpipe modality
MODALITY_ALIASES: dict[str, str] = {
    "ct": "ct", "flair": "flair", "t2f": "flair", "t2flair": "flair", "t2-flair": "flair",
    "t1": "t1", "t1n": "t1", "t1w": "t1", "native": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1-ce": "t1ce", "t1post": "t1ce",
    "t2": "t2", "t2w": "t2",
}


@dataclass(frozen=True)
class CaseSource:
    """Where one case's files are and how to read its labels."""

    case_id: str
    images: dict[str, Path | None]  # task modality → file, None when missing (task order)
    label: Path | None
    group: str  # labeled | unlabeled | test
    label_map: dict[int, int]  # raw label value → internal label id (explicit, complete)
    label_convention: str  # flare | brats-2023 | brats-legacy | dataset
    layout: str

    @property
    def labeled(self) -> bool:
        return self.label is not None

    def paths(self) -> list[Path]:
        return [p for p in self.images.values() if p is not None] + ([self.label] if self.label else [])


@dataclass
class Discovery:
    layout: str
    task: str
    root: Path
    cases: list[CaseSource] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (case id or file, reason)
    notes: list[str] = field(default_factory=list)


# detection --------------------------------------------------------------------------------
def _nnunet_root(root: Path) -> Path | None:
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return root
    found = [d for d in subdirs(root) if (d / "dataset.json").is_file() and (d / "imagesTr").is_dir()]
    return found[0] if len(found) == 1 else None


def detect_layout(root: Path) -> str:
    if not root.is_dir():
        raise SegpipeError(f"data folder {root} does not exist or is not a folder")
    if _nnunet_root(root) is not None:
        return "nnunet"
    if brats_case_dirs(root):
        return "brats"
    if _flare_folders(root):
        return "flare"
    if image_files(root):
        return "flat"
    raise SegpipeError(
        f"{root}: cannot detect the data layout (no dataset.json+imagesTr, no BraTS case folders, no "
        "FLARE-style images/labels folders, no image files); pass --layout"
    )


# helpers shared by the layouts ------------------------------------------------------------
def _case_problem(discovery: Discovery, case_id: str) -> bool:
    try:
        check_case_id(case_id)
    except SegpipeError as exc:
        discovery.problems.append((case_id, str(exc)))
        return True
    return False


def _check_task(layout: str, expected: str, requested: str | None) -> str:
    if requested is not None and requested != expected:
        raise SegpipeError(f"the {layout} layout holds {expected} data but the config's task is {requested!r}")
    return expected


def _identity_map(task: TaskSpec) -> dict[int, int]:
    return {i: i for i in range(task.num_classes)}


def _finalise(discovery: Discovery) -> Discovery:
    seen: dict[str, CaseSource] = {}
    for case in discovery.cases:
        if case.case_id in seen:
            discovery.problems.append((case.case_id, f"duplicate case id ({seen[case.case_id].group} and {case.group})"))
        else:
            seen[case.case_id] = case
    dup = {cid for cid, _ in discovery.problems}
    discovery.cases = sorted((c for c in seen.values() if c.case_id not in dup), key=lambda c: c.case_id)
    return discovery


# FLARE -----------------------------------------------------------------------------------
def _flare_role(rel_parts: list[str]) -> str:
    parts = [p.lower() for p in rel_parts]
    last = parts[-1] if parts else ""
    is_label = any(w in last for w in _LABEL_WORDS)
    if any("unlabel" in p or p.startswith("trainu") for p in parts):
        return "unlabeled"
    if any("val" in p or "test" in p for p in parts):
        return "test_labels" if is_label else "test"
    return "labels" if is_label else "images"


def _flare_folders(root: Path) -> dict[str, list[Path]]:
    roles: dict[str, list[Path]] = defaultdict(list)
    for d in walk_dirs(root, _MAX_DEPTH)[1:]:
        if image_files(d):
            roles[_flare_role(list(d.relative_to(root).parts))].append(d)
    if not roles.get("images") and not roles.get("unlabeled"):
        return {}
    return dict(roles)


def _flare_id(path: Path) -> tuple[str, str | None]:
    stem = strip_image_suffix(path)
    m = _CHANNEL.match(stem)
    return (m.group("id"), m.group("ch")) if m else (stem, None)


def _pair_labels(image_dir: Path, label_dirs: list[Path]) -> Path | None:
    siblings = [d for d in label_dirs if d.parent == image_dir.parent]
    if len(siblings) == 1:
        return siblings[0]
    return label_dirs[0] if len(label_dirs) == 1 else None


def _discover_flare(root: Path, task_name: str | None) -> Discovery:
    task = get_task(_check_task("flare", "flare", task_name))
    disc = Discovery("flare", task.name, root)
    folders = _flare_folders(root)
    lmap = _identity_map(task)
    for role, group, labels_role in (("images", "labeled", "labels"), ("unlabeled", "unlabeled", None),
                                     ("test", "test", "test_labels")):
        for image_dir in folders.get(role, []):
            label_dir = _pair_labels(image_dir, folders.get(labels_role, [])) if labels_role else None
            if role == "images" and label_dir is None:
                disc.problems.append((str(image_dir), "training images folder without a matching labels folder"))
                continue
            labels = {strip_image_suffix(p): p for p in image_files(label_dir)} if label_dir else {}
            used: set[str] = set()
            for path in image_files(image_dir):
                case_id, channel = _flare_id(path)
                if channel not in (None, "0000"):
                    disc.problems.append((case_id, f"{path.name}: channel {channel} but FLARE CT has one channel (_0000)"))
                    continue
                if _case_problem(disc, case_id):
                    continue
                label = labels.get(case_id)
                if label is not None:
                    used.add(case_id)
                if role == "images" and label is None:
                    disc.problems.append((case_id, f"no label file {case_id}.nii.gz in {label_dir}"))
                    continue
                disc.cases.append(CaseSource(case_id, {"ct": path}, label, group if role != "test" else "test",
                                             lmap, "flare", "flare"))
            for orphan in sorted(set(labels) - used):
                disc.problems.append((orphan, f"label file in {label_dir} without an image"))
    disc.notes.append(", ".join(f"{role}: {', '.join(str(d.relative_to(root)) for d in dirs)}"
                                for role, dirs in sorted(folders.items())))
    return _finalise(disc)


# BraTS -----------------------------------------------------------------------------------
def _discover_brats(root: Path, task_name: str | None, label_convention: str | None = None) -> Discovery:
    task = get_task(_check_task("brats", "brats", task_name), label_convention)
    named = "brats-2024" if label_convention == "brats2024" else "brats-2023"
    disc = Discovery("brats", task.name, root)
    for case_dir in brats_case_dirs(root):
        case_id = case_dir.name
        if _case_problem(disc, case_id):
            continue
        found: dict[str, Path] = {}
        conventions: set[str] = set()
        problem = None
        for path in image_files(case_dir):
            tag = brats_tag(path)
            if tag is None:
                continue
            convention, what = tag
            if convention != "any":
                conventions.add(convention)
            if what in found:
                problem = f"two files for {what}: {found[what].name} and {path.name}"
            found[what] = path
        if len(conventions) > 1:
            problem = "mixes legacy (_flair/_t1ce) and 2023 (-t2f/-t1c) file names"
        if problem is None and not any(m in found for m in task.modalities):
            problem = "no modality file (expected _flair/_t1/_t1ce/_t2 or -t2f/-t1n/-t1c/-t2w)"
        if problem:
            disc.problems.append((case_id, problem))
            continue
        legacy = conventions == {"legacy"}
        label = found.get("seg")
        rel = [p.lower() for p in case_dir.relative_to(root).parts]
        group = "labeled" if label else ("test" if any("val" in p for p in rel) else "unlabeled")
        disc.cases.append(CaseSource(
            case_id, {m: found.get(m) for m in task.modalities}, label, group,
            dict(BRATS_LEGACY_TO_2023) if legacy else _identity_map(task),
            "brats-legacy" if legacy else named, "brats",
        ))
    return _finalise(disc)


# nnU-Net raw -------------------------------------------------------------------------------
def _nnunet_task(channels: dict[int, str], requested: str | None) -> tuple[str, dict[int, str]]:
    mapped = {}
    for idx, name in channels.items():
        key = name.strip().lower().replace(" ", "").replace("_", "")
        if key not in MODALITY_ALIASES:
            raise SegpipeError(f"dataset.json channel {idx} {name!r} is not a known modality ({', '.join(sorted(MODALITY_ALIASES))})")
        mapped[idx] = MODALITY_ALIASES[key]
    kinds = {"ct" if m == "ct" else "mri" for m in mapped.values()}
    if len(kinds) != 1:
        raise SegpipeError(f"dataset.json mixes CT and MRI channels: {channels}")
    inferred = "flare" if kinds == {"ct"} else "brats"
    if requested is not None and requested != inferred:
        raise SegpipeError(f"dataset.json channels {channels} are {inferred} data but the config's task is {requested!r}")
    if len(set(mapped.values())) != len(mapped):
        raise SegpipeError(f"dataset.json maps two channels to one modality: {channels}")
    return inferred, mapped


def dataset_label_map(labels: dict[str, object], task: TaskSpec, override: dict[int, int] | None) -> dict[int, int]:
    """Raw → internal label ids for an nnU-Net/flat dataset: the explicit override, else identity."""
    if override:
        lmap = {int(k): int(v) for k, v in override.items()}
        lmap.setdefault(0, 0)
        bad = sorted(v for v in lmap.values() if v not in range(task.num_classes))
        if bad:
            raise SegpipeError(f"prepare.label_map maps to ids {bad} outside the {task.name} labels 0..{task.num_classes - 1}")
        return lmap
    if any(not isinstance(v, int) for v in labels.values()):
        raise SegpipeError("dataset.json uses region labels (lists); set prepare.label_map {raw: internal} explicitly")
    ids = sorted(int(v) for v in labels.values())  # type: ignore[call-overload]
    if any(i not in range(task.num_classes) for i in ids):
        raise SegpipeError(f"dataset.json label ids {ids} exceed the {task.name} labels 0..{task.num_classes - 1}; "
                           "set prepare.label_map {raw: internal}")
    return {i: i for i in range(task.num_classes)}


def _discover_nnunet(root: Path, task_name: str | None, label_map: dict[int, int] | None) -> Discovery:
    base = _nnunet_root(root)
    if base is None:
        raise SegpipeError(f"{root}: no nnU-Net dataset (dataset.json + imagesTr) found")
    try:
        meta = json.loads((base / "dataset.json").read_text())
    except (OSError, ValueError) as exc:
        raise SegpipeError(f"{base / 'dataset.json'}: unreadable ({exc})") from None
    raw_channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(raw_channels, dict) or not raw_channels:
        raise SegpipeError(f"{base / 'dataset.json'}: no channel_names")
    name, channels = _nnunet_task({int(k): str(v) for k, v in raw_channels.items()}, task_name)
    task = get_task(name)
    lmap = dataset_label_map(meta.get("labels", {}), task, label_map)
    ending = str(meta.get("file_ending", ".nii.gz"))
    disc = Discovery("nnunet", task.name, root)
    disc.notes.append(f"{base.name}: channels {channels}, labels {meta.get('labels')}")
    for sub, labels_sub, group in (("imagesTr", "labelsTr", "labeled"), ("imagesTs", None, "test")):
        folder = base / sub
        if not folder.is_dir():
            continue
        by_case: dict[str, dict[str, Path]] = defaultdict(dict)
        for path in sorted(folder.iterdir()):
            if not path.name.endswith(ending) or path.name.startswith("."):
                continue
            m = _CHANNEL.match(path.name[: -len(ending)])
            if m is None:
                disc.problems.append((path.name, f"not named <case>_<XXXX>{ending}"))
                continue
            ch = int(m.group("ch"))
            if ch not in channels:
                disc.problems.append((m.group("id"), f"{path.name}: channel {ch} is not in dataset.json"))
                continue
            by_case[m.group("id")][channels[ch]] = path
        for case_id, files in sorted(by_case.items()):
            if _case_problem(disc, case_id):
                continue
            label = None
            if labels_sub:
                label = base / labels_sub / f"{case_id}{ending}"
                if not label.is_file():
                    disc.problems.append((case_id, f"no label {labels_sub}/{case_id}{ending}"))
                    continue
            disc.cases.append(CaseSource(case_id, {m: files.get(m) for m in task.modalities}, label,
                                         group, lmap, "dataset", "nnunet"))
    return _finalise(disc)


# flat folder -------------------------------------------------------------------------------
def _discover_flat(root: Path, task_name: str | None, label_map: dict[int, int] | None) -> Discovery:
    task = get_task(task_name or "flare")
    disc = Discovery("flat", task.name, root)
    lmap = dataset_label_map({}, task, label_map) if label_map else _identity_map(task)
    label_dir = next((root / n for n in ("labels", "masks") if (root / n).is_dir()), None)
    labels = {strip_image_suffix(p): p for p in image_files(label_dir)} if label_dir else {}
    by_case: dict[str, dict[str, Path]] = defaultdict(dict)
    for path in image_files(root):
        case_id, channel = _flare_id(path)
        idx = int(channel) if channel else 0
        if idx >= len(task.modalities):
            disc.problems.append((case_id, f"{path.name}: channel {idx} but task {task.name} has {len(task.modalities)}"))
            continue
        by_case[case_id][task.modalities[idx]] = path
    for case_id, files in sorted(by_case.items()):
        if _case_problem(disc, case_id):
            continue
        label = labels.get(case_id)
        disc.cases.append(CaseSource(case_id, {m: files.get(m) for m in task.modalities}, label,
                                     "labeled" if label else "unlabeled", lmap, "dataset", "flat"))
    return _finalise(disc)


def discover(root: str | Path, layout: str = "auto", task: str | None = None,
             label_map: dict[int, int] | None = None, label_convention: str | None = None) -> Discovery:
    """Find every case under `root`. `task` (from an explicit config) must agree with the data;
    `label_convention` brats2024 admits BraTS label 4 (resection cavity)."""
    root = Path(root)
    if not root.is_dir():
        raise SegpipeError(f"data folder {root} does not exist or is not a folder")
    chosen = detect_layout(root) if layout == "auto" else layout
    if chosen == "flare":
        return _discover_flare(root, task)
    if chosen == "brats":
        return _discover_brats(root, task, label_convention)
    if chosen == "nnunet":
        return _discover_nnunet(root, task, label_map)
    if chosen == "flat":
        return _discover_flat(root, task, label_map)
    raise SegpipeError(f"unknown layout {layout!r} (known: auto, {', '.join(LAYOUTS)})")
