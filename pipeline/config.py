"""Configuration: YAML files validated in one place, overridable from the CLI.

`load_config(path, overrides)` is the only way stages obtain settings. Unknown keys are
errors (a typo must not silently fall back to a default). Defaults work without any file.
Overrides use dotted keys and YAML values: `--set prepare.workers=2 --set prepare.ct_window=[-200,300]`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

# The repository's configs/ (editable installs, CI); the image sets SEGPIPE_CONFIG_DIR to its copy.
CONFIG_DIR = Path(os.environ.get("SEGPIPE_CONFIG_DIR") or Path(__file__).resolve().parent.parent / "configs")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskSection(Section):
    name: Literal["flare", "brats"] = "flare"
    # BraTS labels: "2023" (1,2,3), "legacy" (1,2,4 in files; 1,2,3 inside), "brats2024" (1,2,3 and
    # 4 = resection cavity of post-treatment glioma: prepared, trained, predicted and submitted)
    label_convention: Literal["2023", "legacy", "brats2024"] = "2023"


class PrepareSection(Section):
    layout: Literal["auto", "flare", "brats", "nnunet", "flat"] = "auto"
    coarse_size: tuple[int, int, int] | None = (64, 128, 128)  # (z, y, x); None → use coarse_spacing (bench/coarse_grid.py)
    coarse_spacing: tuple[float, float, float] | None = None  # mm, (z, y, x)
    fine_size: tuple[int, int, int] | None = (96, 192, 192)  # (z, y, x); None → use fine_spacing
    fine_spacing: tuple[float, float, float] | None = None  # mm, (z, y, x)
    fine_margin_mm: float = Field(20.0, ge=0)  # nominal margin around the ROI (CSSN: 20 mm)
    # extra margin stored beyond the nominal one, so training can jitter the ROI (SampleStore.fine_crop)
    fine_jitter_mm: float = Field(20.0, ge=0)
    # fine ROI of labeled cases: the label's foreground box, or the body/brain box (unlabeled: always body)
    fine_roi: Literal["foreground", "body"] = "foreground"
    ct_window: tuple[float, float] = (-325.0, 325.0)
    ct_body_threshold: float = -500.0  # HU; body mask = largest component above it
    ct_stats: Literal["body", "volume"] = "body"  # z-score statistics inside the body mask, or the whole volume (CSSN)
    label_resampling: Literal["nearest", "linear"] = "linear"  # linear = per-label linear + argmax (measured)
    # sample arrays on disk (pipeline/sample_arrays.py): zstd = int16 + zstd, ~5× smaller than float32;
    # npy = float16 .npy, memory-mapped (partial reads for patch training), 2× smaller
    sample_storage: Literal["zstd", "npy"] = "zstd"
    label_map: dict[int, int] | None = None  # nnunet/flat layouts: raw label id → internal id, explicit
    folds: int = Field(5, ge=2)
    seed: int = 0
    workers: int = Field(2, ge=1)
    geometry_tolerance: float = Field(1e-3, gt=0)

    @field_validator("ct_window")
    @classmethod
    def _window_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError("ct_window must be (low, high) with low < high")
        return v

    @model_validator(mode="before")
    @classmethod
    def _spacing_wins(cls, data: Any) -> Any:
        """Setting a stage's spacing switches that stage from fixed size to fixed spacing."""
        if isinstance(data, dict):
            data = dict(data)
            for stage in ("coarse", "fine"):
                if data.get(f"{stage}_spacing") is not None:
                    data[f"{stage}_size"] = None
        return data

    @model_validator(mode="after")
    def _size_or_spacing(self) -> PrepareSection:
        for stage in ("coarse", "fine"):
            size, spacing = getattr(self, f"{stage}_size"), getattr(self, f"{stage}_spacing")
            if size is None and spacing is None:
                raise ValueError(f"set {stage}_size or {stage}_spacing")
            if size is not None and min(size) < 1:
                raise ValueError(f"{stage}_size must be positive")
            if spacing is not None and min(spacing) <= 0:
                raise ValueError(f"{stage}_spacing must be positive")
        return self


# --- training (issue #4): coarse:/fine: hold the network and its stage's knobs, train: the engine ---
class StageTrainSection(Section):
    epochs: int = Field(100, ge=1)
    iters_per_epoch: int | None = Field(None, ge=1)  # None → one pass over the labeled training cases
    batch_size: int = Field(2, ge=1)  # labeled samples per step and process
    unlabeled_batch_size: int = Field(2, ge=0)  # unlabeled samples per step (CPS only)
    patch_size: tuple[int, int, int] | None = None  # (z, y, x); None → the prepared sample size
    # foreground oversampling (nnU-Net: 0.33): with the loader's batch size known, the last slots of each
    # batch (slot >= round(batch*(1-p)); batch 2 -> slot 1) are foreground-centred, else each patch with p
    fg_oversample: float = Field(0.33, ge=0, le=1)
    # centre on a voxel of a class drawn uniformly among those present (nnU-Net), or on any foreground voxel
    fg_sampling: Literal["class", "voxel"] = "class"
    lr: float = Field(1e-3, gt=0)
    loss: Literal["dice_ce", "dice_focal"] = "dice_ce"
    # fine-tuning (nnU-Net's -pretrained_weights): a segpipe weights folder (manifest.json, sha256-checked)
    # whose network of this stage starts every network of the run; a bare name is looked up in
    # model_weights/ (SEGPIPE_WEIGHTS). The architecture must match; --resume takes precedence.
    init_weights: str | None = None


class ModelSection(Section):
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 256], min_length=2)
    blocks: int = Field(1, ge=0)
    strides: list[tuple[int, int, int]] | None = None  # per downsampling (z, y, x); None → 2
    norm: Literal["instance", "batch", "group"] = "instance"
    act: Literal["relu", "leaky_relu", "gelu"] = "leaky_relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    deep_supervision: bool = False


class FineModelSection(ModelSection):
    blocks: int = Field(2, ge=1)
    context: bool = True
    context_reduction: int = Field(4, ge=1)
    decoder_blocks: int = Field(1, ge=1)
    mask_channels: bool = False  # append the modality-availability mask as input channels


class CoarseSection(Section):
    model: ModelSection = ModelSection()
    train: StageTrainSection = StageTrainSection()
    # multi-modal tasks: with this probability a training sample keeps only a random non-empty
    # strict subset of its modalities (the others zeroed and marked missing), so that the
    # localiser works on whatever subset a test case brings
    modality_dropout: float = Field(0.0, ge=0, le=1)


# --- missing-modality methods (issue #6; fine_seg/missing/): one settings model per method,
# chosen by fine.method; a key of another method is an error like any unknown key ---
class _DropoutSettings(Section):
    # warm-up with every available modality, then each sample is reduced to a random non-empty
    # subset of its modalities with probability dropout_p
    dropout: Literal["random", "none"] = "random"
    warmup_fraction: float = Field(0.44, ge=0, le=1)  # ShaSpec: 80k of 180k iterations
    dropout_p: float = Field(1.0, ge=0, le=1)


class ShaSpecSettings(_DropoutSettings):
    method: Literal["shaspec"] = "shaspec"
    specific_channels: list[int] | None = None  # specific encoders; None → fine.model.channels
    align_weight: float = Field(0.1, ge=0)  # L1 between shared features of modality pairs
    cls_weight: float = Field(0.02, ge=0)  # modality classification on specific features


class LCKDSettings(_DropoutSettings):
    method: Literal["lckd"] = "lckd"
    distill_weight: float = Field(0.1, ge=0)  # L1 teacher → student bottleneck features
    elect_every: int = Field(5, ge=1)  # epochs between teacher elections (validation split)
    initial_teacher: Literal["flair", "t1", "t1ce", "t2"] = "flair"


class _SelfDistillSettings(Section):
    temperature: float = Field(4.0, gt=0)  # KL temperature
    kl_weight: float = Field(0.5, ge=0)
    beta_min: float = Field(0.1, gt=0)
    beta_max: float = Field(4.0, gt=0)
    beta_norm: float = Field(2.0, gt=0)  # ‖β‖₂ after each update
    eta: float = Field(0.01, ge=0)  # β step size ...
    eta_growth: float = Field(1.5, ge=1)  # ... multiplied by this ...
    eta_growth_every: int = Field(100, ge=1)  # ... every this many epochs


class PassionSettings(_SelfDistillSettings):
    method: Literal["passion"] = "passion"
    proto_weight: float = Field(0.1, ge=0)


class HGASettings(_SelfDistillSettings):
    method: Literal["hga"] = "hga"
    proto_weight: float = Field(0.02, ge=0)
    reptile_eps: tuple[float, float] = (0.1, 1.0)  # interpolation ε from → to over training


MissingSection = Annotated[ShaSpecSettings | LCKDSettings | PassionSettings | HGASettings,
                           Field(discriminator="method")]
METHOD_SETTINGS: dict[str, type[Section]] = {"shaspec": ShaSpecSettings, "lckd": LCKDSettings,
                                              "passion": PassionSettings, "hga": HGASettings}


def missing_settings(method: str, **values: Any) -> Section:
    """The validated settings of a missing-modality method (defaults + `values`)."""
    return METHOD_SETTINGS[method].model_validate(values)


class FineSection(Section):
    model: FineModelSection = FineModelSection()
    train: StageTrainSection = StageTrainSection()
    # missing-modality training method (issue #6): plain = the network above, zero-filled inputs
    method: Literal["plain", "shaspec", "lckd", "passion", "hga"] = "plain"
    # the method's settings (ShaSpecSettings, ...); filled with its defaults, None for plain
    missing: MissingSection | None = None
    roi_jitter_mm: float = Field(0.0, ge=0)  # CSSN: 40 mm; needs the raw images (SampleStore.fine_crop)
    roi_jitter_p: float = Field(0.5, ge=0, le=1)
    modality_dropout: float = Field(0.0, ge=0, le=1)  # plain method only: as coarse.modality_dropout

    @model_validator(mode="before")
    @classmethod
    def _settings_of_the_method(cls, data: Any) -> Any:
        """`missing` takes its method from `method`: defaults when absent, an error when they disagree."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        method, missing = data.get("method", "plain"), data.get("missing")
        if method == "plain":
            if missing:
                raise ValueError("missing: settings of a missing-modality method, but fine.method is plain")
            data["missing"] = None
        elif missing is None:
            data["missing"] = {"method": method}
        elif isinstance(missing, dict):
            if missing.get("method", method) != method:
                raise ValueError(f"missing.method {missing['method']} differs from fine.method {method}")
            data["missing"] = {**missing, "method": method}
        return data

    @model_validator(mode="after")
    def _dropout_of_plain_only(self) -> FineSection:
        if self.method != "plain" and self.modality_dropout > 0:
            raise ValueError(f"modality_dropout is the plain network's; fine.method {self.method} has its own "
                             "schedule (fine.missing)")
        return self


class CPSSection(Section):
    enabled: bool = False
    weight: float = Field(1.0, ge=0)
    rampup_epochs: float = Field(10.0, ge=0)  # sigmoid ramp-up exp(-5(1-t)^2)
    # CutMix on the unlabeled rows (CPS paper's strongest variant): pseudo-labels of the unmixed
    # patches, mixed by the same box as the input the networks learn from (pipeline/training/cps.py)
    cutmix: bool = False
    cutmix_share: tuple[float, float] = (0.25, 0.5)  # the box's share of the patch volume, drawn uniformly

    @field_validator("cutmix_share")
    @classmethod
    def _share(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] < 1:
            raise ValueError(f"cutmix_share needs 0 < low <= high < 1, got {list(v)}")
        return v


class UIFSection(Section):
    enabled: bool = False
    refresh_every: int = Field(10, ge=1)  # epochs between scoring passes over the unlabeled scans
    start_epoch: int | None = Field(None, ge=1)  # first filtering; None → 2·refresh_every
    keep: int | None = Field(None, ge=1)  # keep this many scans ...
    fraction: float = Field(0.1, gt=0, le=1)  # ... or this share (used when keep is None)
    alpha: float = Field(0.5, ge=0, le=1)  # weight of network disagreement vs checkpoint instability
    history_stride: int = Field(2, ge=1)  # pseudo-labels kept on disk at 1/stride resolution


Range = tuple[float, float]


class AugmentSection(Section):
    """On-the-fly augmentation (pipeline/training/augment.py). Defaults: the augmentation the
    shipped weights were trained with (rotation/zoom, additive intensity jitter). nnU-Net v2's
    further transforms are options with nnU-Net's values in the comments; bench/train_vs_nnunet.py
    measured them (with class-uniform foreground sampling) at 0.049 mean DSC below the defaults at
    3,000 iterations, and on the BraTS demo's short training they took Dice WT from 0.74 to 0.21,
    so no config switches them on unasked."""

    enabled: bool = True
    flip_axes: list[int] = Field(default_factory=list)  # tensor axes (0=z, 1=y, 2=x); none for left/right labels
    flip_p: float = Field(0.5, ge=0, le=1)  # per axis
    rotate_deg: float = Field(10.0, ge=0)  # ± per axis (nnU-Net: 30)
    rotate_p: float = Field(0.2, ge=0, le=1)
    # auto: about z only when the patch is flat (max(patch) / patch z > 3, nnU-Net's "dummy 2D"), else all axes
    rotate_axes: Literal["auto", "all", "in_plane"] = "all"
    rotate_deg_in_plane: float = Field(180.0, ge=0)  # ± about z when rotating in-plane only (nnU-Net: 180)
    scale: float | Range = 0.1  # zoom factor in [1-scale, 1+scale], or [lo, hi] (nnU-Net: [0.7, 1.4])
    scale_p: float = Field(0.2, ge=0, le=1)
    intensity_shift: float = Field(0.1, ge=0)  # added, in normalised units (not in nnU-Net)
    intensity_scale: float = Field(0.1, ge=0, lt=1)  # multiplied by [1-s, 1+s]
    intensity_p: float = Field(0.5, ge=0, le=1)
    # Gaussian noise, std U(0, noise_std), one std for all channels. nnU-Net calls its (0, 0.1) a
    # "noise_variance" but passes the draw to np.random.normal as the standard deviation
    noise_p: float = Field(0.0, ge=0, le=1)
    noise_std: float = Field(0.1, ge=0)
    blur_p: float = Field(0.0, ge=0, le=1)  # Gaussian blur, sigma U(blur_sigma) per channel and axis
    blur_sigma: Range = (0.5, 1.0)
    blur_p_channel: float = Field(0.5, ge=0, le=1)
    brightness_p: float = Field(0.0, ge=0, le=1)  # multiplicative, per channel
    brightness_range: Range = (0.75, 1.25)
    contrast_p: float = Field(0.0, ge=0, le=1)  # about the channel mean, clipped to the channel's range
    contrast_range: Range = (0.75, 1.25)
    lowres_p: float = Field(0.0, ge=0, le=1)  # nearest downsampling by U(lowres_scale), linear upsampling
    lowres_scale: Range = (0.5, 1.0)
    lowres_p_channel: float = Field(0.5, ge=0, le=1)
    gamma_inverted_p: float = Field(0.0, ge=0, le=1)  # gamma on the inverted image, mean and std retained
    gamma_p: float = Field(0.0, ge=0, le=1)  # gamma, mean and std retained
    gamma_range: Range = (0.7, 1.5)

    @field_validator("blur_sigma", "brightness_range", "contrast_range", "lowres_scale", "gamma_range")
    @classmethod
    def _positive_range(cls, v: Range) -> Range:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"need 0 < low <= high, got {list(v)}")
        return v

    @field_validator("lowres_scale")
    @classmethod
    def _downscale(cls, v: Range) -> Range:
        if v[1] > 1:
            raise ValueError(f"downscaling factors must be <= 1, got {list(v)}")
        return v

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float | Range) -> float | Range:
        if isinstance(v, tuple):
            if not 0 < v[0] <= v[1]:
                raise ValueError(f"zoom range needs 0 < low <= high, got {list(v)}")
        elif not 0 <= v < 1:
            raise ValueError(f"zoom ±{v}: must be in [0, 1)")
        return v

    @property
    def scale_range(self) -> Range:
        """The zoom factor's [low, high]; (1, 1) means no zoom."""
        return self.scale if isinstance(self.scale, tuple) else (1 - self.scale, 1 + self.scale)


class TrainSection(Section):
    fold: int = Field(0, ge=0)
    seed: int = 0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.99, ge=0, lt=1)  # SGD (Nesterov)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    schedule: Literal["poly", "step"] = "poly"
    poly_power: float = Field(0.9, gt=0)
    step_milestones: list[float] = Field(default_factory=lambda: [0.66, 0.86])  # fractions of training
    step_factors: list[float] = Field(default_factory=lambda: [0.1, 0.05])
    warmup_epochs: float = Field(1.0, ge=0)  # linear LR warm-up
    grad_clip: float | None = Field(12.0, gt=0)
    amp: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPUs that have it, else fp16; fp32 on CPU
    compile: bool = False
    channels_last: bool = False  # channels_last_3d memory format (faster 3D convs on CPU/oneDNN and recent GPUs)
    deterministic: bool = False
    num_threads: int | None = Field(None, ge=1)
    workers: int = Field(0, ge=0)  # data-loading processes per training process
    val_every: int = Field(1, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    # multi-modal tasks: the distribution of the modality subset a dropped sample keeps (coarse/fine
    # modality_dropout, ShaSpec/LCKD dropout; pipeline/training/modality_dropout.py). uniform: every
    # non-empty subset alike (1/15 each); by_size: ShaSpec's size-first draw (pairs 1/24, full set 1/4)
    modality_subsets: Literal["uniform", "by_size"] = "uniform"
    cps: CPSSection = CPSSection()
    uif: UIFSection = UIFSection()
    augment: AugmentSection = AugmentSection()

    @model_validator(mode="after")
    def _combinations(self) -> TrainSection:
        if self.uif.enabled and not self.cps.enabled:
            raise ValueError("uif.enabled needs cps.enabled (UIF chooses the unlabeled scans CPS learns from)")
        if self.cps.cutmix and not self.cps.enabled:
            raise ValueError("cps.cutmix needs cps.enabled (it mixes the unlabeled patches CPS learns from)")
        if len(self.step_milestones) != len(self.step_factors):
            raise ValueError("step_milestones and step_factors need the same length")
        if any(not 0 < m < 1 for m in self.step_milestones) or sorted(self.step_milestones) != self.step_milestones:
            raise ValueError("step_milestones: increasing fractions of training in (0, 1)")
        return self


# --- inference (issue #5): `segpipe predict`; see pipeline/inference/ ---
# The postprocessing schema (rules: pipeline/inference/postprocess.py). Also read from a weights
# manifest's `postprocess` entry and from the task defaults, through PostprocessPlan.from_dict.
class ClassRule(Section):
    mode: Literal["largest", "threshold", "none"] = "largest"
    min_volume_mm3: float = Field(0.0, ge=0)


class SmallLesionRule(Section):
    label: int = Field(3, ge=1)  # internal id checked (BraTS 2023: 3 = ET)
    min_voxels: int = Field(500, ge=1)  # ShaSpec: ET < 500 voxels → necrotic core
    relabel_to: int = Field(1, ge=0)  # 1 = NCR (ShaSpec), 0 = background (PASSION ETPro)


class PostprocessPlan(Section):
    default: ClassRule = ClassRule()
    classes: dict[int, ClassRule] = Field(default_factory=dict)  # per internal label id
    connectivity: Literal[6, 18, 26] = 26
    small_lesion: SmallLesionRule | None = None

    def rule(self, label: int) -> ClassRule:
        return self.classes.get(label, self.default)

    @classmethod
    def from_dict(cls, data: Any, source: str = "postprocess") -> PostprocessPlan:
        """A plan from a mapping (a manifest's entry, a task default); None or {} → the defaults."""
        if isinstance(data, PostprocessPlan):
            return data
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_problems(exc)}") from None


class PredictSection(Section):
    """Every prediction setting, in one validated object: the config file's `predict:`, then an
    MLCube parameters file, then `--set`, then explicit `segpipe predict` flags (explicit wins);
    pipeline.commands.predict.predict_settings merges them, the Predictor and run_predict read it."""

    weights: Path | None = None  # model_weights/<name> folder; None → the shipped weights of the task
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mode: Literal["auto", "flare", "grand-challenge", "brats", "mlcube"] = "auto"  # auto: detected from the input
    on_error: Literal["empty", "skip", "fail"] = "empty"  # a failed case: empty mask, nothing, or stop the run
    label_convention: Literal["2023", "legacy", "brats2024"] | None = None  # BraTS output labels; None → task.label_convention
    overlap: float = Field(0.5, ge=0, lt=1)  # sliding-window overlap (fine stage, when the ROI exceeds the patch)
    window: Literal["auto", "whole", "sliding"] = "auto"
    window_batch: int = Field(1, ge=1)  # sliding windows per forward pass (MONAI's sw_batch_size)
    tta: bool = False  # mirror test-time augmentation over mirror_axes
    mirror_axes: list[Literal[0, 1, 2]] = Field(default_factory=lambda: [0, 1])  # z, y; never x (left/right organs)
    coarse_min_volume_mm3: float = Field(1000.0, ge=0)  # CSSN: coarse components below are ignored
    z_window_mm: float | None = Field(240.0, gt=0)  # CSSN: ROI z-window around the main component
    roi_margin_mm: float | None = Field(None, ge=0)  # None → the margin the fine samples were prepared with
    amp: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on CUDA, fp32 on CPU
    # the CPU runtime of the networks; auto: OpenVINO when installed and the weights carry its IR
    runtime: Literal["auto", "torch", "openvino"] = "auto"
    postprocess: PostprocessPlan | None = None  # None → the weights' manifest, else the task default
    gc_output_slug: str | None = None  # grand-challenge output interface; None → the input's slug
    num_threads: int | None = Field(None, ge=1)  # None → the cores this process may use
    upsample_chunk_floats: int = Field(1 << 24, ge=1)  # upsampled logits held at once (64 MB in fp32)


class SegpipeConfig(Section):
    task: TaskSection = TaskSection()
    prepare: PrepareSection = PrepareSection()
    coarse: CoarseSection = CoarseSection()
    fine: FineSection = FineSection()
    train: TrainSection = TrainSection()
    predict: PredictSection = PredictSection()

    @model_validator(mode="after")
    def _training_combinations(self) -> SegpipeConfig:
        """Settings that are valid alone but do not work together."""
        from pipeline.tasks import get_task

        method, single = self.fine.method, len(get_task(self.task.name).modalities) < 2
        if method != "plain":
            if self.train.cps.enabled:
                raise ValueError(f"fine.method {method} cannot be combined with train.cps (the methods train one "
                                 "network on labeled cases)")
            if single:
                raise ValueError(f"fine.method {method} needs a multi-modal task (task {self.task.name} has one input)")
            if self.fine.model.mask_channels:
                raise ValueError(f"fine.model.mask_channels is the plain network's; fine.method {method} encodes each "
                                 "modality apart and knows which are missing")
        for stage in ("coarse", "fine"):
            if single and getattr(self, stage).modality_dropout > 0:
                raise ValueError(f"{stage}.modality_dropout needs a multi-modal task (task {self.task.name} has one input)")
            if self.train.cps.cutmix and getattr(self, stage).train.unlabeled_batch_size < 2:
                raise ValueError(f"train.cps.cutmix mixes pairs of unlabeled patches: {stage}.train.unlabeled_batch_size "
                                 "must be >= 2")
        return self


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. prepare.workers=2")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    return key.strip(), value


def resolve_config_path(path: str | Path) -> Path:
    """Accept a path or a bare task name (`flare` → configs/flare.yaml)."""
    p = Path(path)
    if p.is_file():
        return p
    candidate = CONFIG_DIR / f"{path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"config {path}: no such file (known: {', '.join(sorted(c.stem for c in CONFIG_DIR.glob('*.yaml')))})")


def read_config_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """The raw mapping of a config file (or task name) and where it came from, unvalidated."""
    resolved = resolve_config_path(path)
    try:
        loaded = yaml.safe_load(resolved.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{resolved}: invalid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{resolved}: top level must be a mapping")
    return loaded, str(resolved)


def validate_config(data: dict[str, Any], source: str, overrides: list[str] | None = None) -> SegpipeConfig:
    """Apply `--set` overrides to `data` and validate it; problems become one ConfigError line."""
    for text in overrides or []:
        _set_dotted(data, *parse_override(text))
    try:
        return SegpipeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SegpipeConfig:
    data, source = read_config_file(path) if path is not None else ({}, "defaults")
    return validate_config(data, source, overrides)


def dump_config(config: SegpipeConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
