"""Input/output naming contracts of the challenges, and case discovery for `segpipe predict`.

| mode            | input                                               | output                                  |
| flare           | IN/<case>_0000.nii.gz                               | OUT/<case>.nii.gz                       |
| grand-challenge | IN/images/<slug>/<uuid>.mha                         | OUT/images/<out-slug>/<uuid>.mha        |
| brats           | IN/<ID>/<ID>-{t1c,t1n,t2f,t2w}.nii.gz (any subset; | OUT/<ID>.nii.gz                         |
|                 | legacy <ID>_{flair,t1,t1ce,t2}.nii.gz)              |                                         |
| mlcube          | as brats, under --data_path                         | as brats, under --output_path           |

grand-challenge: when IN/inputs.json is there (the platform writes it: a list of
{"socket" | "interface": {"slug", "kind", "relative_path": "images/<slug>"}, ...}), only the
image sockets it lists are read.

Auto-detection (first match): IN/inputs.json or IN/images/<slug>/ with .mha/.tif files → grand-challenge; BraTS
case folders → brats; IN/*_0000.<image suffix> → flare. Output paths are built from checked
case ids (pipeline.fsutil.safe_child), so nothing is ever written outside OUT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.brats_files import brats_case_dirs
from pipeline.errors import SegpipeError
from pipeline.fsutil import check_case_id, safe_child
from pipeline.image_io import image_suffix, strip_image_suffix

MODES = ("flare", "grand-challenge", "brats", "mlcube")
GC_SUFFIXES = (".mha", ".tif", ".tiff")
_FLARE_INPUT = re.compile(r"^(?P<id>.+)_(?P<ch>\d{4})$")


@dataclass
class InferenceCase:
    case_id: str
    images: dict[str, Path | None]  # task modality → file (None = missing)
    output: Path

    @property
    def present(self) -> dict[str, Path]:
        return {m: p for m, p in self.images.items() if p is not None}


@dataclass
class Problem:
    """A case found but unusable before reading it (bad name, mixed conventions, ...)."""

    case_id: str
    reason: str
    output: Path | None  # where an empty mask would go (None: no safe name)
    reference: Path | None  # an image whose grid the empty mask can take


@dataclass
class InferencePlan:
    mode: str
    task: str  # flare (CT) | brats (MRI): chooses the default weights
    root: Path
    out: Path
    cases: list[InferenceCase] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _files(folder: Path, suffixes: tuple[str, ...] | None = None) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    out = []
    for p in entries:
        if p.name.startswith(".") or not p.is_file():
            continue
        suffix = image_suffix(p) if suffixes is None else next((s for s in suffixes if p.name.lower().endswith(s)), None)
        if suffix:
            out.append(p)
    return out


def _gc_slugs(root: Path) -> list[Path]:
    images = root / "images"
    if not images.is_dir():
        return []
    return [d for d in sorted(images.iterdir()) if d.is_dir() and _files(d, GC_SUFFIXES)]


def gc_image_sockets(root: Path) -> list[str] | None:
    """Image socket slugs listed in IN/inputs.json (None: no manifest). Non-image sockets
    (values, JSON files) are left out; a malformed manifest is a one-line error."""
    manifest = root / "inputs.json"
    if not manifest.is_file():
        return None
    import json

    try:
        entries = json.loads(manifest.read_text())
        if not isinstance(entries, list):
            raise ValueError("top level is not a list")
        slugs = []
        for entry in entries:
            socket = entry.get("socket") or entry.get("interface") or {}
            relative = str(socket.get("relative_path") or "")
            kind = str(socket.get("super_kind") or socket.get("kind") or "")
            if relative.startswith("images/") and kind.lower() in ("image", ""):
                slugs.append(relative.split("/", 1)[1].strip("/"))
    except (OSError, ValueError, AttributeError) as exc:
        raise SegpipeError(f"{manifest}: not a grand-challenge inputs manifest ({exc})") from None
    return slugs


def _is_brats(root: Path) -> bool:
    return bool(brats_case_dirs(root))


def detect_mode(root: Path) -> str:
    if (root / "inputs.json").is_file() or _gc_slugs(root):
        return "grand-challenge"
    if _is_brats(root):
        return "brats"
    if any(_FLARE_INPUT.match(strip_image_suffix(p)) for p in _files(root)):
        return "flare"
    raise SegpipeError(f"{root}: cannot tell the input layout (no images/<slug>/*.mha, no BraTS case folders, "
                       "no <case>_0000.nii.gz files); pass --mode")


def _output(out: Path, name: str, suffix: str) -> Path:
    return safe_child(out, f"{check_case_id(name)}{suffix}")


def plan_flare(root: Path, out: Path) -> InferencePlan:
    plan = InferencePlan("flare", "flare", root, out)
    for path in _files(root):
        m = _FLARE_INPUT.match(strip_image_suffix(path))
        if m is None:
            continue  # not a challenge input (README, mask, ...)
        cid = m.group("id")
        try:
            target = _output(out, cid, ".nii.gz")
        except SegpipeError as exc:
            plan.problems.append(Problem(cid, str(exc), None, None))
            continue
        if m.group("ch") != "0000":
            plan.problems.append(Problem(cid, f"{path.name}: channel {m.group('ch')}, but the CT model reads one "
                                         "channel (_0000)", None, None))
            continue
        plan.cases.append(InferenceCase(cid, {"ct": path}, target))
    return plan


def plan_grand_challenge(root: Path, out: Path, output_slug: str | None = None) -> InferencePlan:
    """One case per image file; output next to the same uuid under images/<output_slug or slug>/."""
    plan = InferencePlan("grand-challenge", "flare", root, out)
    listed = gc_image_sockets(root)
    slug_dirs = _gc_slugs(root)
    if listed is not None:
        present = {d.name for d in slug_dirs}
        for slug in listed:
            if slug not in present:
                plan.problems.append(Problem(slug, f"inputs.json lists image socket {slug!r} but "
                                             f"{root}/images/{slug}/ holds no .mha file", None, None))
        slug_dirs = [d for d in slug_dirs if d.name in listed]
    for slug_dir in slug_dirs:
        slug = output_slug or slug_dir.name
        try:
            check_case_id(slug)
            dest = safe_child(safe_child(out, "images"), slug)
        except SegpipeError as exc:
            plan.problems.append(Problem(slug_dir.name, f"output interface slug: {exc}", None, None))
            continue
        for path in _files(slug_dir, GC_SUFFIXES):
            uuid = path.name[: -len(".mha")] if path.name.lower().endswith(".mha") else strip_image_suffix(path)
            try:
                target = safe_child(dest, f"{check_case_id(uuid)}.mha")
            except SegpipeError as exc:
                plan.problems.append(Problem(uuid, str(exc), None, None))
                continue
            if not path.name.lower().endswith(".mha"):
                plan.problems.append(Problem(uuid, f"{path.name}: only .mha inputs are supported", None, None))
                continue
            plan.cases.append(InferenceCase(uuid, {"ct": path}, target))
    return plan


def plan_brats(root: Path, out: Path, mode: str = "brats") -> InferencePlan:
    from data_prepare.layouts import discover

    disc = discover(root, "brats", "brats")
    plan = InferencePlan(mode, "brats", root, out)
    for src in disc.cases:
        plan.cases.append(InferenceCase(src.case_id, dict(src.images), _output(out, src.case_id, ".nii.gz")))
    for cid, reason in disc.problems:
        target = reference = None
        try:
            target = _output(out, cid, ".nii.gz")
            case_dir = next((d for d in [root / cid, *root.glob(f"*/{cid}")] if d.is_dir()), None)
            files = _files(case_dir) if case_dir is not None else []
            reference = next((f for f in files if not strip_image_suffix(f).lower().endswith("seg")), None)
        except SegpipeError:
            pass
        plan.problems.append(Problem(cid, reason, target, reference))
    return plan


def plan_cases(root: str | Path, out: str | Path, mode: str = "auto", *, gc_output_slug: str | None = None) -> InferencePlan:
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise SegpipeError(f"input folder {root} does not exist or is not a folder")
    if mode == "auto":
        mode = detect_mode(root)
    if mode == "flare":
        return plan_flare(root, out)
    if mode == "grand-challenge":
        return plan_grand_challenge(root, out, gc_output_slug)
    if mode in ("brats", "mlcube"):
        return plan_brats(root, out, mode)
    raise SegpipeError(f"unknown mode {mode!r} (auto, {', '.join(MODES)})")
