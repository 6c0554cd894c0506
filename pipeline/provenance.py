"""Where images and weights came from: the synthetic-image marker and the weights' training data.

`segpipe synth` writes "segpipe synth <kind>" into every image's description (NIfTI `descrip`,
MetaImage/NRRD `ITK_FileNotes`), so segpipe can tell its own synthetic images from scans.
`segpipe prepare` records what a work folder was prepared from (`training_data_record`: the
synth manifest's generator, seed, size and case count, or the data folder's name), `package`
copies that record into the weights' manifest, and `predict` warns once per run when weights
trained on synthetic data meet an image without the marker (`SyntheticInputCheck`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from pipeline.image_io import NOTE_KEY

SYNTH_GENERATOR = "segpipe synth"  # also the marker's prefix (NIfTI `descrip` holds 80 bytes)
SYNTH_MANIFEST = "synth.json"


# images -------------------------------------------------------------------------------------
def mark_synthetic(image: sitk.Image, kind: str) -> sitk.Image:
    """Tag `image` (in place, and returned) as written by `segpipe synth <kind>`."""
    image.SetMetaData(NOTE_KEY, f"{SYNTH_GENERATOR} {kind}")
    return image


def _note(path: str | Path) -> str | None:
    """The header's note, read without the voxels ("" when there is none), None when unreadable."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader.GetMetaData(NOTE_KEY).strip() if reader.HasMetaDataKey(NOTE_KEY) else ""


def synthetic_kind(path: str | Path) -> str | None:
    """The `<kind>` of a file's synth marker ("" for a bare marker), None when there is no marker."""
    note = _note(path)
    return note[len(SYNTH_GENERATOR):].strip() if note and note.startswith(SYNTH_GENERATOR) else None


def is_synthetic_image(path: str | Path) -> bool | None:
    """True when the file's header carries the synth marker, False when it does not, None when
    the header cannot be read (the case fails on its own; no verdict about the data)."""
    note = _note(path)
    return None if note is None else note.startswith(SYNTH_GENERATOR)


# training data --------------------------------------------------------------------------------
def training_data_record(data_root: str | Path, images: Sequence[Path] = ()) -> dict[str, Any] | None:
    """What `prepare --data DATA_ROOT` prepared from, for the weights' manifest.

    A folder written by `segpipe synth` (its `synth.json`) → {"synthetic": true, "generator",
    "kind", "seed", "size", "orientation", "cases"}; without a synth.json, a folder whose
    `images` (one per case) all carry the synth marker → the same with what the marker tells;
    any other folder → {"synthetic": false, "source": its name}; None when a synth.json is
    there but unreadable or not segpipe's."""
    root = Path(data_root)
    manifest = root / SYNTH_MANIFEST
    if not manifest.is_file():
        kinds = {synthetic_kind(p) for p in images}
        if images and None not in kinds:
            return {"synthetic": True, "generator": SYNTH_GENERATOR, "kind": ",".join(sorted(kinds)) or None,
                    "seed": None, "size": None, "orientation": None, "cases": len(images)}
        return {"synthetic": False, "source": root.name}
    try:
        synth = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(synth, dict) or synth.get("generator") != SYNTH_GENERATOR:
        return None
    options = synth.get("options") if isinstance(synth.get("options"), dict) else {}
    cases = synth.get("cases")
    return {
        "synthetic": True, "generator": SYNTH_GENERATOR, "kind": synth.get("kind"),
        "seed": options.get("seed"), "size": options.get("size"), "orientation": options.get("orientation"),
        # an interrupted synth run lists no cases yet: the count is unknown, not 0
        "cases": len(cases) if synth.get("complete") and isinstance(cases, list) else None,
    }


def synthetic_training(manifest: dict[str, Any]) -> str | None:
    """How the weights' synthetic training data is described, or None when the manifest does not
    say it is synthetic. Manifests written before `training_data` existed (the shipped demo
    weights) say so in their free-text `trained_on`."""
    record = manifest.get("training_data")
    if isinstance(record, dict) and record.get("synthetic") is True:
        facts = [f"{record.get('generator', SYNTH_GENERATOR)} {record.get('kind') or ''}".strip()]
        facts += [f"{key} {record[key]}" for key in ("seed", "size") if record.get(key) is not None]
        if record.get("cases") is not None:
            facts.append(f"{record['cases']} cases")
        return ", ".join(facts)
    trained_on = manifest.get("trained_on")
    if isinstance(trained_on, str) and "synthetic" in trained_on.lower():
        return trained_on
    return None


class SyntheticInputCheck:
    """Predict's once-per-run check: weights trained on synthetic data, an input without the marker."""

    def __init__(self, weights_dir: str | Path, manifest: dict[str, Any]) -> None:
        self.weights_dir = weights_dir
        self.training = synthetic_training(manifest)
        self.warned = False

    def warning(self, case_id: str, image: Path | None) -> str | None:
        """The warning line for the first unmarked input of the run, else None."""
        if self.training is None or self.warned or image is None or is_synthetic_image(image) is not False:
            return None
        self.warned = True
        return (f"weights {self.weights_dir} were trained on synthetic data ({self.training}): fine for smoke "
                f"tests, the demo and the contract checks; for real scans train on real data (case {case_id} "
                f"is not a `{SYNTH_GENERATOR}` image)")
