"""The training engine shared by the coarse and fine stages.

One process (or one torchrun rank) trains one network, or two for cross pseudo supervision,
held in a `ModelPair` so DDP, AMP, clipping and checkpoints treat them as one module. What a
step computes is the stage's step strategy (`pipeline.training.step`: plain, CPS, a
missing-modality method); validation and best-model selection are `validate.py`, the logs
`epoch_log.py`. Everything random is re-seeded from (seed, epoch, step, rank) at each step, and
the LR is a function of the global step, so a run resumed from an epoch checkpoint is
bit-identical to an uninterrupted one (given `train.deterministic` and the same hardware/thread count).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import SegpipeError
from pipeline.fsutil import atomic_write_text
from pipeline.log import get_logger, progress
from pipeline.training.amp import amp_policy
from pipeline.training.checkpoint import latest_checkpoint, resume_from, save_checkpoint
from pipeline.training.cps import CPSStep
from pipeline.training.data import PatchDataset, SampleLike, SampleSource, derive_seed, epoch_plan, rank_slice
from pipeline.training.distributed import DistContext, barrier, gather_objects, unwrap, wrap_ddp
from pipeline.training.epoch_log import EpochLogger
from pipeline.training.export import build_stage_model
from pipeline.training.method_step import MethodStep
from pipeline.training.optim import build_optimizer, lr_factor, param_groups, set_lr
from pipeline.training.pretrained import initialise_from
from pipeline.training.step import Batch, PlainStep, RunContext, StepAt, StepOutput, TrainStep
from pipeline.training.validate import Scorer, class_dice, validate_epoch, validation_due

log = get_logger("train")

Callback = Callable[[str, dict[str, Any]], None]


@dataclass
class StageSpec:
    """What differs between stages; built by coarse_seg.train / fine_seg.train from the config."""

    name: str  # "coarse" | "fine"
    model_config: dict[str, Any]
    train: Any  # pipeline.config.StageTrainSection
    num_classes: int
    sample_stage: str
    # training-time loader (case_id, item_seed) → sample; default: source.load(case_id, sample_stage)
    loader: Callable[[SampleSource, str, int], SampleLike] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # extra facts for model_config.json
    # missing-modality method hooks (fine_seg.missing.MissingMethod), run by pipeline.training.method_step
    method: Any = None
    # validation score per network (higher is better); None → mean class Dice (validate.class_dice)
    scorer: Scorer | None = None


class ModelPair(nn.Module):
    """One network, or two of the same architecture for CPS; forward returns one output per network."""

    def __init__(self, nets: Iterable[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor, modality_mask: torch.Tensor, **kw: Any) -> list[Any]:
        return [net(x, modality_mask, **kw) for net in self.nets]


def build_pair(spec: StageSpec, count: int, seed: int) -> ModelPair:
    nets = []
    for i in range(count):
        torch.manual_seed(derive_seed(seed, "init", i))  # different initialisations, reproducible
        nets.append(build_stage_model(spec.name, spec.model_config))
    return ModelPair(nets)


@dataclass
class Engine:
    """The state of one training run, shared by the loop's parts."""

    run: RunContext
    step: TrainStep
    pair: ModelPair
    model: nn.Module  # the pair, DDP-wrapped and compiled as configured
    optimizer: torch.optim.Optimizer
    state: dict[str, Any]
    logger: EpochLogger
    callbacks: list[Callback]
    batch: int  # labeled samples per step and process
    unlabeled_batch: int
    total_steps: int
    warmup: int
    memory_format: torch.memory_format

    @property
    def nets(self) -> list[nn.Module]:
        return list(unwrap(self.model).nets)


def _loader(items: list[tuple[str, int]], spec: StageSpec, source: SampleSource, cfg: Any, labeled: bool,
            batch: int) -> Iterable[dict[str, Any]]:
    if spec.loader is not None:
        def load(cid: str, seed: int) -> SampleLike:
            return spec.loader(source, cid, seed)  # type: ignore[misc]
    else:
        def load(cid: str, seed: int) -> SampleLike:
            return source.load(cid, spec.sample_stage)
    ds = PatchDataset(items, load, patch=spec.train.patch_size, fg_p=spec.train.fg_oversample,
                      augment_cfg=cfg.augment, num_classes=spec.num_classes, labeled=labeled,
                      fg_sampling=spec.train.fg_sampling, batch_size=batch)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=cfg.workers,
                                       persistent_workers=False, drop_last=True)


def _run_context(spec: StageSpec, source: SampleSource, cfg: Any, out_dir: Path, ctx: DistContext,
                 step: TrainStep) -> RunContext:
    train_ids = source.case_ids("train", cfg.fold)
    if not train_ids:
        raise SegpipeError(f"{spec.name}: no labeled training cases in fold {cfg.fold}")
    unl_ids = source.case_ids("unlabeled", cfg.fold) if step.uses_unlabeled else []
    if step.uses_unlabeled and not unl_ids:
        log.warning("%s: CPS enabled but there are no unlabeled scans; CPS uses the labeled batches only", spec.name)
    policy = amp_policy(ctx.device, cfg.amp)
    run = RunContext(spec, source, cfg, ctx, policy, out_dir, train_ids, source.case_ids("val", cfg.fold), unl_ids)
    run.per_step = spec.train.batch_size * ctx.world_size
    run.iters = spec.train.iters_per_epoch or max(1, math.ceil(len(train_ids) / run.per_step))
    return run


def _restore(run: RunContext, pair: ModelPair, optimizer: torch.optim.Optimizer, resume: bool,
             state: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """Resume from the latest checkpoint into `state`; the method tensors when resumed, else None."""
    spec, out_dir = run.spec, run.out_dir
    if not resume:
        if run.ctx.is_main and latest_checkpoint(out_dir) is not None:
            log.warning("%s: %s already holds checkpoints; starting over (use --resume to continue)", spec.name, out_dir)
        return None
    found = resume_from(out_dir, spec.name, spec.model_config, pair, optimizer, run.policy.scaler, run.ctx.device)
    if found is None:
        log.warning("%s: --resume but no checkpoint in %s; starting from scratch", spec.name, out_dir)
        return None
    ckpt, loaded, tensors = found
    state.update(loaded)
    if run.ctx.is_main:
        log.info("%s: resumed from %s (epoch %d, step %d)", spec.name, ckpt.name, state["epoch"], state["global_step"])
    return tensors


def _write_model_config(run: RunContext) -> None:
    spec = run.spec
    run.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.out_dir / "model_config.json", json.dumps(
        {"stage": spec.name, "model": spec.model_config, "num_classes": spec.num_classes,
         "sample_stage": spec.sample_stage, "patch_size": spec.train.patch_size, **spec.info}, indent=1))


def _configure_torch(cfg: Any) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic


def _engine(spec: StageSpec, source: SampleSource, cfg: Any, out_dir: Path, ctx: DistContext, resume: bool,
            callbacks: list[Callback]) -> Engine:
    step = build_step(spec, cfg)
    run = _run_context(spec, source, cfg, out_dir, ctx, step)
    fmt = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    pair = build_pair(spec, step.networks, cfg.seed).to(ctx.device).to(memory_format=fmt)
    optimizer = build_optimizer(param_groups([pair], cfg.weight_decay), cfg.optimizer, spec.train.lr,
                                momentum=cfg.momentum, betas=cfg.betas)
    state: dict[str, Any] = {"epoch": 0, "global_step": 0, "best_dice": None, "best_epoch": None,
                             "best_net": None, "metrics": [], "model_config": spec.model_config}
    tensors = _restore(run, pair, optimizer, resume, state)
    if spec.train.init_weights and state["global_step"] == 0:
        source_info = initialise_from(list(pair.nets), spec.name, spec.model_config, spec.train.init_weights)
        spec.info["init_weights"] = source_info
        if ctx.is_main:
            log.info("%s: every network starts from %s (fine-tuning; its best: %s)", spec.name,
                     source_info["folder"], source_info["best"])
    if ctx.is_main:
        _write_model_config(run)
    model: nn.Module = wrap_ddp(pair, ctx)
    if cfg.compile:
        model = torch.compile(model)
    step.restore(state, tensors, list(unwrap(model).nets))
    st = spec.train
    eng = Engine(run, step, pair, model, optimizer, state, EpochLogger(spec.name, st.epochs, out_dir, ctx), callbacks,
                 st.batch_size, st.unlabeled_batch_size if step.uses_unlabeled else 0, st.epochs * run.iters,
                 round(cfg.warmup_epochs * run.iters), fmt)
    eng.logger.start(f"{len(run.train_ids)} labeled / {len(run.val_ids)} val / {len(run.unlabeled_ids)} unlabeled "
                     f"cases, {st.epochs} epochs × {run.iters} steps, batch {eng.batch}+{eng.unlabeled_batch} × "
                     f"{ctx.world_size} process(es), {run.policy.name} on {ctx.device}, {step.describe(run)}")
    return eng


def _epoch_batches(eng: Engine, epoch: int) -> tuple[Iterable[dict[str, Any]], Iterator[dict[str, Any]] | None]:
    """This process's labeled loader and unlabeled iterator (None without unlabeled batches)."""
    run, cfg, world = eng.run, eng.run.cfg, eng.run.ctx.world_size
    b, ub = eng.batch, eng.unlabeled_batch
    plan = eng.step.begin_epoch(run, epoch, eng.nets)
    pool = plan.unlabeled_pool
    labeled = plan.labeled or epoch_plan(run.train_ids, run.iters * b * world, cfg.seed, epoch, "labeled")
    lab_items = rank_slice(labeled, run.ctx.rank, world, b)
    unl_items = rank_slice(epoch_plan(pool, run.iters * ub * world, cfg.seed, epoch, "unlabeled"), run.ctx.rank,
                           world, ub) if ub and pool else []
    lab_loader = _loader(lab_items, run.spec, run.source, cfg, True, b)
    unl_iter = iter(_loader(unl_items, run.spec, run.source, cfg, False, ub)) if unl_items else None
    return lab_loader, unl_iter


def _train_step(eng: Engine, at: StepAt, batch: dict[str, Any], unl_iter: Iterator[dict[str, Any]] | None) -> tuple[StepOutput, float]:
    run, cfg = eng.run, eng.run.cfg
    device = run.ctx.device
    torch.manual_seed(derive_seed(cfg.seed, "step", at.epoch, at.step, run.ctx.rank))
    lr = run.spec.train.lr * lr_factor(at.global_step, at.total_steps, schedule=cfg.schedule, warmup_steps=eng.warmup,
                                       poly_power=cfg.poly_power, milestones=cfg.step_milestones,
                                       factors=cfg.step_factors)
    set_lr(eng.optimizer, lr)
    parts = [batch] + ([next(unl_iter)] if unl_iter is not None else [])
    x = torch.cat([p["image"] for p in parts]).to(device, non_blocking=True).to(memory_format=eng.memory_format)
    mask = torch.cat([p["modality_mask"] for p in parts]).to(device)
    out = eng.step.loss(eng.model, Batch(x, mask, batch["label"].to(device), list(batch["case_id"])), at, run.policy)
    if not torch.isfinite(out.loss):
        raise SegpipeError(f"{run.spec.name}: non-finite loss at epoch {at.epoch + 1} step {at.step + 1} "
                           f"(cases {', '.join(batch['case_id'])}); lower train lr or check the data")
    run.policy.backward_step(out.loss, eng.optimizer, eng.nets, cfg.grad_clip)
    eng.step.after_step(eng.nets, at)
    return out, lr


def _train_epoch(eng: Engine, epoch: int) -> tuple[dict[str, float], dict[str, float], float]:
    """One epoch of steps: (means of loss/sup over processes, means of the strategy's parts, last LR)."""
    run, state = eng.run, eng.state
    lab_loader, unl_iter = _epoch_batches(eng, epoch)
    for net in eng.nets:
        net.train()
    sums = {"loss": 0.0, "sup": 0.0}
    part_sums: dict[str, float] = {}
    lr = float("nan")
    steps = enumerate(lab_loader)
    if run.ctx.is_main:
        steps = progress(steps, total=run.iters, desc=f"{run.spec.name} {epoch + 1}/{run.spec.train.epochs}", unit="it")
    for step, batch in steps:
        at = StepAt(epoch, step, state["global_step"], eng.total_steps, run.iters)
        out, lr = _train_step(eng, at, batch, unl_iter)
        state["global_step"] += 1
        sums["loss"] += float(out.loss.detach())
        sums["sup"] += float(out.sup.detach())
        for k, v in out.parts.items():
            part_sums[k] = part_sums.get(k, 0.0) + v
        for cb in eng.callbacks:
            cb("step", {"epoch": epoch, "step": step, "cases": list(batch["case_id"]), "rank": run.ctx.rank})
    return _mean_over_ranks(sums, run), _mean_over_ranks(part_sums, run), lr


def _mean_over_ranks(sums: dict[str, float], run: RunContext) -> dict[str, float]:
    means = {k: v / run.iters for k, v in sums.items()}
    gathered = gather_objects(means, run.ctx)
    return {k: float(np.mean([m.get(k, 0.0) for m in gathered])) for k in means}


def _end_epoch(eng: Engine, epoch: int, means: dict[str, float], parts: dict[str, float], lr: float,
               t0: float) -> None:
    run, state, st = eng.run, eng.state, eng.run.spec.train
    metrics: dict[str, Any] = {"epoch": epoch + 1, **means, "lr": lr,
                               **eng.step.end_epoch(run, epoch, eng.nets, parts)}
    state.update(eng.step.state())
    if validation_due(epoch, st.epochs, run.cfg.val_every):
        metrics["val_dice"] = validate_epoch(run, epoch, eng.nets, state, run.spec.scorer or class_dice)
    metrics["time_s"] = time.time() - t0
    state["metrics"].append(metrics)
    state["epoch"] = epoch + 1
    if run.ctx.is_main:
        save_checkpoint(run.out_dir, epoch + 1, eng.pair, eng.optimizer, run.policy.scaler, state,
                        keep=run.cfg.keep_checkpoints, method_tensors=eng.step.tensors())
        eng.logger.epoch(metrics, state)
    barrier(run.ctx)
    for cb in eng.callbacks:
        cb("epoch_end", {"epoch": epoch + 1, "state": state, "rank": run.ctx.rank})


def build_step(spec: Any, cfg: Any) -> TrainStep:
    """The strategy of a stage: its missing-modality method, CPS when enabled, else plain."""
    if spec.method is not None:
        return MethodStep(spec.method)
    if cfg.cps.enabled:
        return CPSStep(spec.train.loss, cfg.cps, cfg.uif)
    return PlainStep(spec.train.loss)


def train_stage(spec: StageSpec, source: SampleSource, cfg: Any, out_dir: str | Path, *,
                ctx: DistContext | None = None, resume: bool = False,
                callbacks: Iterable[Callback] = ()) -> dict[str, Any]:
    """Train one stage; `cfg` is the `train:` config section. Returns the final state summary."""
    ctx = ctx or DistContext()
    out_dir = Path(out_dir)
    _configure_torch(cfg)
    eng = _engine(spec, source, cfg, out_dir, ctx, resume, list(callbacks))
    for epoch in range(eng.state["epoch"], spec.train.epochs):
        t0 = time.time()
        means, parts, lr = _train_epoch(eng, epoch)
        _end_epoch(eng, epoch, means, parts, lr, t0)
    eng.logger.close()
    for cb in eng.callbacks:
        cb("train_end", {"model": eng.pair, "state": eng.state, "rank": ctx.rank})
    state = eng.state
    summary = {k: state[k] for k in ("epoch", "global_step", "best_dice", "best_epoch", "best_net")}
    if ctx.is_main:
        atomic_write_text(out_dir / "summary.json", json.dumps({**summary, "metrics": state["metrics"]}, indent=1))
    return summary
