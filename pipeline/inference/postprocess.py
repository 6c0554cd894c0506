"""Connected-component postprocessing of a label map, per class.

Rules (each class independently, 26-connectivity by default):
- `largest`: keep the largest component, and only if it reaches `min_volume_mm3`
  (CSSN keeps the largest organ component above 1000/2000 mm³; nnU-Net's "remove all but the
  largest component");
- `threshold`: keep every component of at least `min_volume_mm3` (multifocal lesions);
- `none`: leave the class alone.
Removed voxels become background. Then the small-lesion rule (BraTS "ET below N voxels →
relabel", ShaSpec: ET < 500 voxels → necrotic core) relabels a whole class when its total
voxel count is below `min_voxels`.

Overlap resolution: the label map comes from an argmax over one softmax, so every voxel has
exactly one class and classes never overlap; postprocessing only removes voxels (→ 0) or
relabels a whole class, so it cannot create overlaps either. (CSSN's per-organ sigmoids could
overlap, and there the later label won.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.config import ClassRule, PostprocessPlan, SmallLesionRule

__all__ = ["TASK_DEFAULTS", "ClassRule", "PostprocessPlan", "SmallLesionRule", "plan_for", "postprocess"]


# task defaults, used when neither the config nor the weights' manifest says otherwise
TASK_DEFAULTS: dict[str, PostprocessPlan] = {
    # organs are single objects: keep the largest component of each
    "flare": PostprocessPlan(default=ClassRule(mode="largest", min_volume_mm3=0.0)),
    # tumours can be multifocal: drop only specks; ET rule off unless configured
    "brats": PostprocessPlan(default=ClassRule(mode="threshold", min_volume_mm3=10.0)),
}


def plan_for(task: str, configured: PostprocessPlan | None, manifest: dict) -> PostprocessPlan:
    """The plan a run uses: the configured one, else the weights manifest's, else the task default."""
    if configured is not None:
        return configured
    if "postprocess" in manifest:
        return PostprocessPlan.from_dict(manifest["postprocess"], "weights manifest postprocess")
    return TASK_DEFAULTS.get(task, PostprocessPlan())


def _components_to_keep(binary: np.ndarray, rule: ClassRule, voxel_mm3: float, connectivity: int) -> np.ndarray | None:
    """Mask of the kept voxels of one class, or None when all are kept."""
    import cc3d

    labels, n = cc3d.connected_components(binary, connectivity=connectivity, return_N=True)
    if n == 0:
        return None
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0
    min_voxels = rule.min_volume_mm3 / voxel_mm3
    if rule.mode == "largest":
        keep_ids = [int(np.argmax(counts))] if counts.max() >= min_voxels else []
    else:
        keep_ids = [i for i in range(1, n + 1) if counts[i] >= min_voxels]
    if len(keep_ids) == n:
        return None
    lut = np.zeros(n + 1, bool)
    lut[keep_ids] = True
    return lut[labels]


def postprocess(labels: np.ndarray, plan: PostprocessPlan, spacing: Sequence[float],
                class_ids: Sequence[int] | None = None) -> np.ndarray:
    """Apply `plan` to a uint8 label map (in place when possible); `spacing` in mm, any order."""
    from scipy import ndimage

    voxel_mm3 = float(np.prod(spacing))
    out = labels
    present = np.flatnonzero(np.bincount(out.ravel(), minlength=1))
    ids = [int(c) for c in (class_ids if class_ids is not None else present) if int(c) != 0]
    boxes = ndimage.find_objects(out, max_label=int(out.max(initial=0)))
    for c in ids:
        rule = plan.rule(c)
        if rule.mode == "none" or c > len(boxes) or boxes[c - 1] is None:
            continue
        if rule.mode not in ("largest", "threshold"):
            raise ValueError(f"unknown postprocessing mode {rule.mode!r} for class {c}")
        sl = boxes[c - 1]  # work inside the class's bounding box only
        view = out[sl]
        binary = view == c
        keep = _components_to_keep(binary, rule, voxel_mm3, plan.connectivity)
        if keep is not None:
            view[binary & ~keep] = 0
    if plan.small_lesion is not None:
        sl_rule = plan.small_lesion
        n = int(np.count_nonzero(out == sl_rule.label))
        if 0 < n < sl_rule.min_voxels:
            out[out == sl_rule.label] = sl_rule.relabel_to
    return out
