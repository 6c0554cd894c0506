"""A prediction run: plan the cases, load the weights once, predict and write each case.

One bad case never stops the others. What is written for a failed case is `on_error`:
`empty` (default) writes an all-zero uint8 mask in the input's grid (so a challenge still gets a
file per case) and the run exits non-zero at the end; `skip` writes nothing (exit non-zero);
`fail` stops at the first failure.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PredictSection
from pipeline.errors import SegpipeError
from pipeline.inference.modes import InferencePlan, plan_cases
from pipeline.log import get_logger

log = get_logger("predict")


@dataclass
class RunResult:
    written: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (case, one-line reason)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def cpu_threads() -> int:
    """Cores this process may use (affinity/cgroup-aware where the OS tells)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    try:  # cgroup v2 quota (docker --cpus)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def reference_geometry(path: Path | None) -> Any:
    """The 3D grid of an image from its header alone (works for NaN voxels or a truncated
    stream; a 4D header gives its first three axes), or None when no header can be read."""
    import SimpleITK as sitk

    from pipeline.image_io import Geometry

    if path is None:
        return None
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        dim = reader.GetDimension()
        if dim < 3:
            return None
        d = np.asarray(reader.GetDirection(), float).reshape(dim, dim)[:3, :3]
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            d = np.eye(3)
        return Geometry(tuple(int(v) for v in reader.GetSize()[:3]), tuple(float(v) for v in reader.GetSpacing()[:3]),  # type: ignore[arg-type]
                        tuple(float(v) for v in reader.GetOrigin()[:3]), tuple(float(v) for v in d.ravel()))  # type: ignore[arg-type]
    except RuntimeError:
        return None


def write_empty(target: Path, reference: Path | None) -> bool:
    from pipeline.image_io import image_from_array, write_image

    geo = reference_geometry(reference)
    if geo is None:
        return False
    write_image(image_from_array(np.zeros(geo.shape_zyx, np.uint8), geo), target)
    return True


def _check_folders(plan: InferencePlan) -> None:
    root, out = plan.root.resolve(), plan.out.resolve()
    if out == root or root in out.parents:
        raise SegpipeError(f"output folder {plan.out} is inside the input folder {plan.root}; inputs are never written")


def run_predict(input_dir: str | Path, output_dir: str | Path, settings: PredictSection | None = None) -> RunResult:
    """Every case of `input_dir` → `output_dir` with `settings` (defaults: PredictSection())."""
    import torch

    from pipeline.device import pick_device
    from pipeline.image_io import from_canonical, write_image
    from pipeline.inference.engine import Predictor
    from pipeline.provenance import SyntheticInputCheck
    from pipeline.weights import default_weights_root, find_weights, load_weights

    settings = settings or PredictSection()
    on_error = settings.on_error
    started = time.perf_counter()
    plan = plan_cases(input_dir, output_dir, settings.mode, gc_output_slug=settings.gc_output_slug)
    _check_folders(plan)
    result = RunResult()
    if not plan.cases and not plan.problems:
        log.warning("%s: no %s input cases found", plan.root, plan.mode)
        return result
    torch.set_num_threads(settings.num_threads or cpu_threads())
    dev = pick_device(settings.device)
    wdir = find_weights(settings.weights if settings.weights is not None else default_weights_root(), plan.task)
    loaded = load_weights(wdir, dev)
    if loaded.task != plan.task:
        log.warning("weights %s are for task %s, the %s input looks like %s data", wdir, loaded.task, plan.mode, plan.task)
    predictor = Predictor(loaded, dev, settings)
    synthetic = SyntheticInputCheck(wdir, loaded.manifest)
    log.info("%s mode: %d case(s) in %s → %s; weights %s (%s) on %s, %d threads", plan.mode, len(plan.cases),
             plan.root, plan.out, wdir.name, loaded.task, dev, torch.get_num_threads())

    def failure(case_id: str, reason: str, target: Path | None, reference: Path | None) -> None:
        result.failed.append((case_id, reason))
        log.error("case %s: %s", case_id, reason)
        if on_error == "fail":
            raise SegpipeError(f"case {case_id}: {reason} (--on-error fail)")
        if on_error == "empty" and target is not None:
            if write_empty(target, reference):
                log.warning("case %s: wrote an empty mask %s", case_id, target)
            else:
                log.warning("case %s: no readable image header, no output written", case_id)

    for problem in plan.problems:
        failure(problem.case_id, problem.reason, problem.output, problem.reference)
    for case in plan.cases:
        t = time.perf_counter()
        if line := synthetic.warning(case.case_id, next(iter(case.present.values()), None)):
            log.warning("%s", line)
        try:
            res = predictor.predict(case)
            write_image(from_canonical(res.labels, res.reorientation), case.output)
        except SegpipeError as exc:
            reason = str(exc)
            prefix = f"case {case.case_id}: "
            failure(case.case_id, reason[len(prefix):] if reason.startswith(prefix) else reason, case.output,
                    next(iter(case.present.values()), None))
            continue
        except Exception as exc:  # one bad case never stops the others
            log.debug("case %s failed", case.case_id, exc_info=True)
            failure(case.case_id, f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}", case.output,
                    next(iter(case.present.values()), None))
            continue
        result.written.append(case.case_id)
        log.info("case %s → %s (%.2f s; %s)", case.case_id, case.output.name, time.perf_counter() - t,
                 ", ".join(f"{k} {v:.2f}" for k, v in res.info["seconds"].items()))
    result.seconds = time.perf_counter() - started
    if result.failed:
        log.error("%d of %d case(s) failed: %s", len(result.failed), len(plan.cases) + len(plan.problems),
                  "; ".join(f"{c}: {r}" for c, r in result.failed[:5]))
    return result
