"""What is specific to training the coarse stage: its model config, sample and patch size, and
the modality dropout of multi-modal tasks (`coarse.modality_dropout`)."""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from pipeline.tasks import TaskSpec
from pipeline.training.modality_dropout import with_modality_dropout


def model_config(config: Any, task: TaskSpec) -> dict[str, Any]:
    return {"in_channels": len(task.modalities), "num_classes": task.num_classes,
            **config.coarse.model.model_dump(mode="json")}


def stage_spec(config: Any, task: TaskSpec) -> Any:
    """A trainer StageSpec for `segpipe train coarse` (config: pipeline.config.SegpipeConfig)."""
    from pipeline.training.trainer import StageSpec

    st = config.coarse.train.model_copy()
    if st.patch_size is None:
        st.patch_size = config.prepare.coarse_size  # whole coarse sample
        if st.patch_size is None and st.batch_size > 1:
            raise ConfigError("coarse.train.patch_size: needed when prepare.coarse_spacing gives samples of varying size")
    info = {"task": task.name, "modalities": list(task.modalities), "labels": {str(k): v for k, v in task.labels.items()},
            "sample_size": config.prepare.coarse_size, "sample_spacing": config.prepare.coarse_spacing}
    loader = None
    if config.coarse.modality_dropout > 0:  # the localiser must work on any modality subset too
        loader = with_modality_dropout(None, "coarse", config.coarse.modality_dropout, config.train.modality_subsets)
        info["modality_dropout"] = config.coarse.modality_dropout
        info["modality_subsets"] = config.train.modality_subsets
    scorer = None
    if config.coarse.modality_dropout > 0:
        from pipeline.training.subset_validate import subset_selection

        scorer = subset_selection(task, info)
    return StageSpec(name="coarse", model_config=model_config(config, task), train=st, num_classes=task.num_classes,
                     sample_stage="coarse", loader=loader, scorer=scorer, info=info)
