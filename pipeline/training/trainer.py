"""The training loop shared by the coarse and fine stages.

One process (or one torchrun rank) trains one network, or two for cross pseudo supervision,
held in a `ModelPair` so DDP, AMP, clipping and checkpoints treat them as one module. Everything
random is re-seeded from (seed, epoch, step, rank) at each step, and the LR is a function of the
global step, so a run resumed from an epoch checkpoint is bit-identical to an uninterrupted one
(given `train.deterministic` and the same hardware/thread count).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import SegpipeError
from pipeline.fsutil import atomic_write_text
from pipeline.log import get_logger, progress
from pipeline.training import uif as uif_mod
from pipeline.training.amp import AmpPolicy, amp_policy
from pipeline.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_method_tensors,
    save_best,
    save_checkpoint,
)
from pipeline.training.cps import cps_loss, cps_weight, main_output
from pipeline.training.data import PatchDataset, SampleLike, SampleSource, derive_seed, epoch_plan, rank_slice
from pipeline.training.distributed import DistContext, gather_objects, shard, unwrap, wrap_ddp
from pipeline.training.export import build_stage_model
from pipeline.training.losses import supervised_loss
from pipeline.training.optim import build_optimizer, lr_factor, param_groups, set_lr

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
    # missing-modality method hooks (fine_seg.missing.MissingMethod): loss per step, sampling plan, epoch end
    method: Any = None


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


def case_dice(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> float:
    """Mean Dice over classes in the ground truth (a class absent from GT but predicted scores 0)."""
    scores = []
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        ng, np_ = int(g.sum()), int(p.sum())
        if ng == 0 and np_ == 0:
            continue
        scores.append(2 * int((p & g).sum()) / (ng + np_))
    return float(np.mean(scores)) if scores else 1.0


@torch.inference_mode()
def predict_probs(net: nn.Module, sample: SampleLike, device: torch.device, policy: AmpPolicy) -> torch.Tensor:
    x = torch.from_numpy(np.array(sample.image, dtype=np.float32))[None].to(device)
    m = torch.as_tensor(np.asarray(sample.modality_mask, dtype=bool))[None].to(device)
    with policy.autocast():
        logits = main_output(net(x, m))
    return torch.softmax(logits.float(), 1)[0]


def evaluate(nets: list[nn.Module], source: SampleSource, ids: list[str], spec: StageSpec,
             ctx: DistContext, policy: AmpPolicy) -> list[float]:
    """Mean case Dice of each network on `ids` (sharded over ranks)."""
    for net in nets:
        net.eval()
    local: dict[str, list[float]] = {}
    for cid in shard(ids, ctx):
        sample = source.load(cid, spec.sample_stage)
        if sample.label is None:
            raise SegpipeError(f"case {cid}: validation case without a label map")
        gt = torch.from_numpy(np.array(sample.label, dtype=np.uint8)).to(ctx.device)
        local[cid] = [case_dice(predict_probs(n, sample, ctx.device, policy).argmax(0), gt, spec.num_classes) for n in nets]
    merged: dict[str, list[float]] = {}
    for part in gather_objects(local, ctx):
        merged.update(part)
    if not merged:
        return [float("nan")] * len(nets)
    return [float(np.mean([v[i] for v in merged.values()])) for i in range(len(nets))]


def uif_refresh(epoch: int, nets: list[nn.Module], source: SampleSource, ids: list[str], spec: StageSpec,
                cfg: Any, ctx: DistContext, policy: AmpPolicy, state: dict[str, Any], out_dir: Path) -> list[str]:
    """Score every unlabeled scan, update the instability history, return the new pool."""
    ucfg = cfg.uif
    udir = out_dir / "uif"
    history = uif_mod.PseudoLabelHistory(udir / "pseudo_labels")
    prev_epoch = state["uif"].get("last_refresh")
    for net in nets:
        net.eval()
    local: dict[str, dict[str, Any]] = {}
    for cid in shard(ids, ctx):
        probs = [predict_probs(n, source.load(cid, spec.sample_stage), ctx.device, policy) for n in nets]
        s = uif_mod.score_scan(probs, history.load(prev_epoch, cid), ucfg.history_stride)
        history.save(epoch, cid, s.pop("pseudo_label"))
        local[cid] = s
    scores: dict[str, dict[str, Any]] = {}
    for part in gather_objects(local, ctx):
        scores.update(part)
    hist = state["uif"]["history"]
    for cid, s in sorted(scores.items()):
        if s["instability"] is not None:
            total, n = hist.get(cid, [0.0, 0])
            hist[cid] = [total + s["instability"], n + 1]
    rows = uif_mod.rank_scans(scores, hist, ucfg.alpha)
    start = ucfg.start_epoch or 2 * ucfg.refresh_every
    applied = epoch >= start
    n_keep = uif_mod.select_count(len(rows), ucfg.keep, ucfg.fraction) if applied else len(rows)
    pool = sorted(r["case_id"] for r in rows[:n_keep])
    state["uif"].update(last_refresh=epoch, pool=pool if applied else None)
    if ctx.is_main:
        uif_mod.save_ranking(udir, epoch, rows, set(pool), applied)
        worst = rows[-1] if rows else {"case_id": "-", "score": float("nan")}
        log.info("%s UIF epoch %d: %s %d/%d unlabeled scans (cut-off U=%.3f; least certain %s U=%.3f)",
                 spec.name, epoch, "kept" if applied else f"scored (all used until epoch {start})",
                 len(pool), len(rows), rows[n_keep - 1]["score"] if n_keep else float("nan"),
                 worst["case_id"], worst["score"])
    from pipeline.training.distributed import barrier

    barrier(ctx)
    history.prune({epoch} | ({prev_epoch} if prev_epoch is not None else set()))
    return pool


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


def train_stage(spec: StageSpec, source: SampleSource, cfg: Any, out_dir: str | Path, *,
                ctx: DistContext | None = None, resume: bool = False,
                callbacks: Iterable[Callback] = ()) -> dict[str, Any]:
    """Train one stage; `cfg` is the `train:` config section. Returns the final state summary."""
    ctx = ctx or DistContext()
    out_dir = Path(out_dir)
    callbacks = list(callbacks)
    st = spec.train
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic

    train_ids = source.case_ids("train", cfg.fold)
    val_ids = source.case_ids("val", cfg.fold)
    if not train_ids:
        raise SegpipeError(f"{spec.name}: no labeled training cases in fold {cfg.fold}")
    use_cps = cfg.cps.enabled
    unl_ids = source.case_ids("unlabeled", cfg.fold) if use_cps else []
    if use_cps and not unl_ids:
        log.warning("%s: CPS enabled but there are no unlabeled scans; CPS uses the labeled batches only", spec.name)
    use_uif = use_cps and cfg.uif.enabled and bool(unl_ids)

    pair = build_pair(spec, 2 if use_cps else 1, cfg.seed).to(ctx.device)
    fmt = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    pair = pair.to(memory_format=fmt)
    policy = amp_policy(ctx.device, cfg.amp)
    optimizer = build_optimizer(param_groups([pair], cfg.weight_decay), cfg.optimizer, st.lr,
                                momentum=cfg.momentum, betas=cfg.betas)
    state: dict[str, Any] = {"epoch": 0, "global_step": 0, "best_dice": None, "best_epoch": None,
                             "best_net": None, "uif": {"pool": None, "history": {}, "last_refresh": None},
                             "metrics": [], "model_config": spec.model_config}
    ckpt: Path | None = None
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None:
            log.warning("%s: --resume but no checkpoint in %s; starting from scratch", spec.name, out_dir)
        else:
            saved = json.loads((ckpt / "state.json").read_text()).get("model_config")
            if saved != spec.model_config:
                raise SegpipeError(f"{ckpt}: checkpoint was trained with a different {spec.name} model config "
                                   f"({saved} vs {spec.model_config})")
            loaded = load_checkpoint(ckpt, pair, optimizer, policy.scaler, ctx.device)
            state.update(loaded)
            if ctx.is_main:
                log.info("%s: resumed from %s (epoch %d, step %d)", spec.name, ckpt.name, state["epoch"], state["global_step"])
    elif ctx.is_main and latest_checkpoint(out_dir) is not None:
        log.warning("%s: %s already holds checkpoints; starting over (use --resume to continue)", spec.name, out_dir)

    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "model_config.json", json.dumps(
            {"stage": spec.name, "model": spec.model_config, "num_classes": spec.num_classes,
             "sample_stage": spec.sample_stage, "patch_size": st.patch_size, **spec.info}, indent=1))
    model: nn.Module = wrap_ddp(pair, ctx)
    if cfg.compile:
        model = torch.compile(model)
    nets = list(unwrap(model).nets)
    method = spec.method
    if method is not None:
        method.load_state_dict(state.get("method"))
        if resume and ckpt is not None:
            method.load_tensor_state(load_method_tensors(ckpt, ctx.device))
        method.start(nets[0])

    world, b, ub = ctx.world_size, st.batch_size, st.unlabeled_batch_size if use_cps else 0
    iters = st.iters_per_epoch or max(1, math.ceil(len(train_ids) / (b * world)))
    total_steps = st.epochs * iters
    warmup = round(cfg.warmup_epochs * iters)
    writer = None
    if ctx.is_main:
        from pipeline.training.tb import ScalarWriter

        writer = ScalarWriter(out_dir / "tensorboard")
        log.info("%s: %d labeled / %d val / %d unlabeled cases, %d epochs × %d steps, batch %d+%d × %d process(es), "
                 "%s on %s, %s", spec.name, len(train_ids), len(val_ids), len(unl_ids), st.epochs, iters, b, ub,
                 world, policy.name, ctx.device, "CPS" + ("+UIF" if use_uif else "") if use_cps
                 else f"supervised, method {method.name}" if method is not None else "supervised")

    for epoch in range(state["epoch"], st.epochs):
        t0 = time.time()
        if use_uif and epoch > 0 and epoch % cfg.uif.refresh_every == 0 and state["uif"].get("last_refresh") != epoch:
            uif_refresh(epoch, nets, source, unl_ids, spec, cfg, ctx, policy, state, out_dir)
        pool = state["uif"]["pool"] if use_uif and state["uif"]["pool"] is not None else unl_ids
        plan = method.epoch_items(source, train_ids, iters * b * world, epoch, iters, b * world) if method else None
        lab_items = rank_slice(plan or epoch_plan(train_ids, iters * b * world, cfg.seed, epoch, "labeled"), ctx.rank, world, b)
        unl_items = rank_slice(epoch_plan(pool, iters * ub * world, cfg.seed, epoch, "unlabeled"), ctx.rank, world, ub) if ub and pool else []
        lab_loader = _loader(lab_items, spec, source, cfg, True, b)
        unl_iter = iter(_loader(unl_items, spec, source, cfg, False, ub)) if unl_items else None
        for net in nets:
            net.train()
        sums = {"loss": 0.0, "sup": 0.0, "cps": 0.0}
        aux_sums: dict[str, float] = {}
        w_cps = 0.0
        steps = progress(enumerate(lab_loader), total=iters, desc=f"{spec.name} {epoch + 1}/{st.epochs}", unit="it") \
            if ctx.is_main else enumerate(lab_loader)
        for step, batch in steps:
            torch.manual_seed(derive_seed(cfg.seed, "step", epoch, step, ctx.rank))
            lr = st.lr * lr_factor(state["global_step"], total_steps, schedule=cfg.schedule, warmup_steps=warmup,
                                   poly_power=cfg.poly_power, milestones=cfg.step_milestones, factors=cfg.step_factors)
            set_lr(optimizer, lr)
            parts = [batch] + ([next(unl_iter)] if unl_iter is not None else [])
            x = torch.cat([p["image"] for p in parts]).to(ctx.device, non_blocking=True).to(memory_format=fmt)
            mask = torch.cat([p["modality_mask"] for p in parts]).to(ctx.device)
            target = batch["label"].to(ctx.device)
            nl = target.shape[0]
            if method is not None:  # the method runs the forward pass(es) and all its loss terms
                with policy.autocast():
                    res = method.step(lambda xx, mm: model(xx, mm, aux=True)[0], x, mask, target,
                                      global_step=state["global_step"], total_steps=total_steps, epoch=epoch, step=step)
                sup, loss = res.sup, res.loss
                for k, v in res.parts.items():
                    aux_sums[k] = aux_sums.get(k, 0.0) + v
            else:
                with policy.autocast():
                    outs = model(x, mask)
                sup = sum(supervised_loss(_rows(o, nl), target, kind=st.loss) for o in outs)
                loss = sup
            cps_val = torch.zeros(())
            if use_cps:
                w_cps = cps_weight(epoch + step / iters, cfg.cps.weight, cfg.cps.rampup_epochs)
                cps_val = cps_loss(main_output(outs[0]), main_output(outs[1]), kind=st.loss)
                loss = sup + w_cps * cps_val
            if not torch.isfinite(loss):
                raise SegpipeError(f"{spec.name}: non-finite loss at epoch {epoch + 1} step {step + 1} "
                                   f"(cases {', '.join(batch['case_id'])}); lower train lr or check the data")
            policy.backward_step(loss, optimizer, nets, cfg.grad_clip)
            if method is not None:
                method.after_step(nets[0], state["global_step"], total_steps)
            state["global_step"] += 1
            sums["loss"] += float(loss.detach())
            sums["sup"] += float(sup.detach())
            sums["cps"] += float(cps_val.detach())
            for cb in callbacks:
                cb("step", {"epoch": epoch, "step": step, "cases": list(batch["case_id"]), "rank": ctx.rank})
        means = {k: v / iters for k, v in sums.items()}
        means = {k: float(np.mean([m[k] for m in gather_objects(means, ctx)])) for k in means}

        metrics: dict[str, Any] = {"epoch": epoch + 1, **means, "lr": lr, "cps_weight": w_cps}
        if method is not None:
            metrics["method"] = {**{k: v / iters for k, v in aux_sums.items()},
                                 **method.epoch_end(nets[0], epoch, source, val_ids, ctx.device)}
            state["method"] = method.state_dict()
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == st.epochs:
            dice = evaluate(nets, source, val_ids, spec, ctx, policy) if val_ids else [float("nan")] * len(nets)
            metrics["val_dice"] = dice
            best_i = int(np.nanargmax(dice)) if not all(math.isnan(d) for d in dice) else 0
            score = dice[best_i]
            improved = state["best_dice"] is None or (not math.isnan(score) and score > state["best_dice"]) \
                or (math.isnan(score) and not val_ids)
            if improved:
                state.update(best_dice=None if math.isnan(score) else score, best_epoch=epoch + 1, best_net=best_i)
                if ctx.is_main:
                    save_best(out_dir, nets[best_i], {"stage": spec.name, "epoch": epoch + 1, "net": best_i,
                                                      "val_dice": state["best_dice"]})
        metrics["time_s"] = time.time() - t0
        state["metrics"].append(metrics)
        state["epoch"] = epoch + 1
        if ctx.is_main:
            save_checkpoint(out_dir, epoch + 1, pair, optimizer, policy.scaler, state, keep=cfg.keep_checkpoints,
                            method_tensors=method.tensor_state() if method is not None else None)
            _log_epoch(spec, st, metrics, state, use_cps, len(pool) if use_cps else 0, len(unl_ids))
            assert writer is not None
            scalars = {f"train/{k}": v for k, v in means.items()} | {"train/lr": lr, "train/cps_weight": w_cps,
                                                                     "time/epoch_s": metrics["time_s"]}
            for i, d in enumerate(metrics.get("val_dice", [])):
                scalars[f"val/dice_net{i}"] = d
            writer.add(epoch + 1, scalars)
        from pipeline.training.distributed import barrier

        barrier(ctx)
        for cb in callbacks:
            cb("epoch_end", {"epoch": epoch + 1, "state": state, "rank": ctx.rank})
    if writer is not None:
        writer.close()
    for cb in callbacks:
        cb("train_end", {"model": pair, "state": state, "rank": ctx.rank})
    summary = {k: state[k] for k in ("epoch", "global_step", "best_dice", "best_epoch", "best_net")}
    if ctx.is_main:
        atomic_write_text(out_dir / "summary.json", json.dumps({**summary, "metrics": state["metrics"]}, indent=1))
    return summary


def _rows(out: Any, n: int) -> Any:
    return [o[:n] for o in out] if isinstance(out, list) else out[:n]


def _log_epoch(spec: StageSpec, st: Any, m: dict[str, Any], state: dict[str, Any], use_cps: bool,
               pool: int, n_unl: int) -> None:
    parts = [f"{spec.name} epoch {m['epoch']}/{st.epochs}", f"loss {m['loss']:.4f}"]
    if use_cps:
        parts.append(f"(sup {m['sup']:.4f} cps {m['cps']:.4f} w {m['cps_weight']:.2f}, unlabeled {pool}/{n_unl})")
    parts.append(f"lr {m['lr']:.2e}")
    if "val_dice" in m:
        parts.append("val dice " + "/".join(f"{d:.4f}" for d in m["val_dice"]))
    if state["best_dice"] is not None:
        parts.append(f"best {state['best_dice']:.4f}@{state['best_epoch']}")
    parts.append(f"{m['time_s']:.1f}s")
    log.info(" ".join(parts))
