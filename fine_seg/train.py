"""What is specific to training the fine stage: its model config, ROI crops with margin jitter."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.tasks import TaskSpec
from pipeline.training.modality_dropout import with_modality_dropout


def model_config(config: Any, task: TaskSpec) -> dict[str, Any]:
    from fine_seg.missing import model_fields

    return {"in_channels": len(task.modalities), "num_classes": task.num_classes,
            **config.fine.model.model_dump(mode="json"), **model_fields(config.fine.method, config.fine.missing)}


def jitter_loader(jitter_mm: float, p: float):
    """With probability p, re-crop the ROI with each side's margin drawn from U(−m/3, m) (CSSN's
    augmentation, m = `fine.roi_jitter_mm`) through `SampleStore.fine_crop`; otherwise the
    prepared fine sample. The draw is seeded by the item seed, so resumes repeat it."""

    def load(source: Any, case_id: str, seed: int) -> Any:
        g = torch.Generator().manual_seed(seed ^ 0x5EED)
        if float(torch.rand((), generator=g)) < p:
            return source.fine_crop(case_id, margin_mm=(-jitter_mm / 3, jitter_mm), rng=np.random.default_rng(seed))
        return source.load(case_id, "fine")

    return load


def stage_spec(config: Any, task: TaskSpec, source: Any = None) -> Any:
    """A trainer StageSpec for `segpipe train fine` (config: pipeline.config.SegpipeConfig)."""
    from pipeline.training.trainer import StageSpec

    st = config.fine.train.model_copy()
    if st.patch_size is None:
        st.patch_size = config.prepare.fine_size
    loader = None
    info = {"task": task.name, "modalities": list(task.modalities), "labels": {str(k): v for k, v in task.labels.items()},
            "sample_size": config.prepare.fine_size, "roi_margin_mm": config.prepare.fine_margin_mm}
    if config.fine.roi_jitter_mm > 0 and config.fine.roi_jitter_p > 0 and hasattr(source, "fine_crop"):
        loader = jitter_loader(config.fine.roi_jitter_mm, config.fine.roi_jitter_p)
    if config.fine.modality_dropout > 0:  # the plain network (the methods have their own schedules)
        loader = with_modality_dropout(loader, "fine", config.fine.modality_dropout, config.train.modality_subsets)
        info["modality_dropout"] = config.fine.modality_dropout
        info["modality_subsets"] = config.train.modality_subsets
    method = _method(config, task, st)
    scorer = None
    if getattr(config.fine.missing, "dropout", "none") != "none":  # ShaSpec / LCKD random subsets
        info["modality_subsets"] = config.train.modality_subsets
    if method is not None or config.fine.modality_dropout > 0:
        from pipeline.training.subset_validate import subset_selection

        scorer = subset_selection(task, info)
    return StageSpec(name="fine", model_config=model_config(config, task), train=st, num_classes=task.num_classes,
                     sample_stage="fine", loader=loader, method=method, scorer=scorer, info=info)


def _method(config: Any, task: TaskSpec, st: Any) -> Any:
    """Per-step hooks of `fine.method` (None for plain); see fine_seg/missing/."""
    from fine_seg.missing import build_method

    if config.fine.method != "plain":  # (method + CPS is rejected by the config's validation)
        from pipeline.errors import ConfigError

        if len(task.modalities) < 2:
            raise ConfigError(f"fine.method {config.fine.method} needs a multi-modal task (task {task.name} has one input)")
    return build_method(config.fine.method, config.fine.missing, num_classes=task.num_classes, loss_kind=st.loss,
                        seed=config.train.seed, modalities=tuple(task.modalities),
                        subset_sampling=config.train.modality_subsets)
