"""Train the coarse localiser or the fine segmenter (cross pseudo supervision over labeled and
uncertainty-filtered unlabeled scans). Scale out with `torchrun --nproc_per_node=N -m pipeline train ...`.

Checkpoints, the best model, UIF rankings and TensorBoard scalars go to WORK/train/<stage>/.
The configuration is the one `prepare` stored in WORK (or --config), plus --set overrides."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.commands._common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=["coarse", "fine"])
    parser.add_argument("--work", required=True, metavar="WORK", help="work folder written by `segpipe prepare`")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="print parameter counts and FLOPs, then exit")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--export", metavar="DIR", help="after training, write the best model's deployable weights here")
    parser.add_argument("--fp16", action="store_true", help="with --export: store the weights as float16")
    add_config_arguments(parser)


def resolve_config(store: Any, path: str | None, overrides: list[str]) -> Any:
    """--config (default: configs/<task>.yaml of the work folder's task), with the `prepare:`
    section replaced by the one `prepare` used for WORK (sample sizes must match the samples),
    then --set overrides; validated once."""
    from pipeline.config import CONFIG_DIR, read_config_file, validate_config
    from pipeline.errors import ConfigError

    task = getattr(store, "task", None)
    if path is None and task is not None and (CONFIG_DIR / f"{task.name}.yaml").is_file():
        path = task.name
    data, source = read_config_file(path) if path is not None else ({}, "defaults")
    if task is not None:
        named = (data.get("task") or {}).get("name", task.name)
        if named != task.name:
            raise ConfigError(f"{source}: task {named!r} does not match the work folder's task {task.name!r}")
        data["task"] = {**(data.get("task") or {}), "name": task.name}
        prepared = getattr(store, "config", None)
        if prepared is not None:
            data["prepare"] = prepared.model_dump(mode="json") if hasattr(prepared, "model_dump") else dict(prepared)
    return validate_config(data, source, overrides)


def describe(spec: Any) -> list[str]:
    """Parameter count and forward FLOPs (FlopCounterMode on a meta-device forward at the patch size)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.nn import count_parameters
    from pipeline.training.export import build_stage_model

    size = spec.train.patch_size
    with torch.device("meta"):
        model = build_stage_model(spec.name, spec.model_config)
        n = int(spec.model_config["in_channels"])
        x = torch.empty(1, n, *size) if size is not None else None
        mask = torch.ones(1, n, dtype=torch.bool)
    lines = [f"{spec.name}: {type(model).__name__}, {count_parameters(model) / 1e6:.2f} M parameters"
             f" ({count_parameters(model) * 4 / 2**20:.1f} MiB fp32)"]
    if x is None:
        lines.append(f"{spec.name}: FLOPs need a fixed patch size ({spec.name}.train.patch_size)")
        return lines
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(x, mask)
    except (RuntimeError, NotImplementedError) as exc:  # data-dependent ops (the missing-modality nets' masks)
        reason = " ".join(str(exc).split())[:80]
        lines.append(f"{spec.name}: FLOPs not counted: its forward depends on the data, which a meta-device "
                     f"forward does not have ({reason}…)")
        lines.append(f"{spec.name}: model config {spec.model_config}")
        return lines
    fwd = counter.get_total_flops()
    lines.append(f"{spec.name}: input 1×{n}×{'×'.join(map(str, size))}, forward {fwd / 1e9:.1f} GFLOPs, "
                 f"training step ≈ {3 * fwd * spec.train.batch_size / 1e9:.1f} GFLOPs per network "
                 f"(batch {spec.train.batch_size})")
    lines.append(f"{spec.name}: model config {spec.model_config}")
    return lines


def _open_store(work: str) -> Any:
    from pathlib import Path

    from pipeline.errors import SegpipeError

    if not Path(work).is_dir():
        raise SegpipeError(f"work folder {work}: not found (run `segpipe prepare` first)")
    try:
        from pipeline.samples import SampleStore
    except ImportError as exc:
        raise SegpipeError(f"sample store unavailable ({exc})") from None
    return SampleStore(work)


def run(args: argparse.Namespace) -> int:
    from pipeline.log import get_logger
    from pipeline.tasks import get_task
    from pipeline.training.distributed import cleanup, init_distributed
    from pipeline.training.export import export_stage, stage_dir
    from pipeline.training.trainer import train_stage

    log = get_logger("train")
    store = None
    if not args.dry_run:
        store = _open_store(args.work)
    else:
        try:
            store = _open_store(args.work)
        except Exception:  # a dry run only needs the config
            store = None
    config = resolve_config(store, args.config, args.overrides)
    task = get_task(config.task.name, config.task.label_convention)  # brats2024: + resection cavity
    if args.stage == "coarse":
        from coarse_seg.train import stage_spec

        spec = stage_spec(config, task)
    else:
        from fine_seg.train import stage_spec as fine_spec

        spec = fine_spec(config, task, store)
    if args.dry_run:
        for line in describe(spec):
            print(line)
        return 0
    ctx = init_distributed(args.device)
    out = stage_dir(args.work, args.stage)
    try:
        if ctx.is_main:  # the settings this run trained with, resolved (config file + overrides + prepare's)
            from pipeline.config import dump_config
            from pipeline.fsutil import atomic_write_text

            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.yaml", f"# resolved by `segpipe train {args.stage}`\n" + dump_config(config))
        summary = train_stage(spec, store, config.train, out, ctx=ctx, resume=args.resume)
        if ctx.is_main:
            best = summary["best_dice"]
            log.info("%s: done, best validation Dice %s at epoch %s → %s", args.stage,
                     "n/a" if best is None else f"{best:.4f}", summary["best_epoch"], out)
            if args.export:
                w, j = export_stage(args.work, args.stage, args.export, fp16=args.fp16)
                log.info("%s: exported %s and %s", args.stage, w, j)
    finally:
        cleanup(ctx)
    return 0
