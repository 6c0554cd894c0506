"""The prepare run: discovery → worker pool → index commits → splits → sweep → report.

Resumable by construction: a case is skipped when its record exists with the same config
fingerprint, the same source files (relative path, size, mtime) and its arrays on disk. The
parent process is the only LMDB writer and commits one record per finished case, so a kill at
any moment loses at most the cases in flight. A worker that dies (segfault, OOM kill) breaks
the pool; the cases that were in flight are retried one at a time in a fresh worker so the one
that kills its worker is identified and reported, and the run goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from data_prepare import splits as splits_mod
from data_prepare import store
from data_prepare.layouts import CaseSource, Discovery, discover
from data_prepare.process import PROCESSING_VERSION
from pipeline import __version__
from pipeline.case_index import SCHEMA_VERSION, CaseIndex
from pipeline.config import PrepareSection
from pipeline.errors import SegpipeError
from pipeline.fsutil import atomic_write_text
from pipeline.log import get_logger, progress
from pipeline.provenance import training_data_record
from pipeline.sample_arrays import SAMPLE_FORMAT
from pipeline.tasks import get_task

log = get_logger("prepare")
REPORT_NAME = "prepare_report.json"
LOCK_NAME = ".prepare.lock"
# settings that do not change the produced samples
_NOT_IN_FINGERPRINT = {"workers", "layout", "folds", "seed"}
SIZE_PROBE_CASES = 4  # cases measured before the size of the rest of a run is projected


@dataclass
class PrepareOutcome:
    report: dict[str, Any]
    failed: list[dict[str, str]] = field(default_factory=list)


def fingerprint(task_name: str, cfg: PrepareSection, label_convention: str | None = None) -> str:
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT}
    labels = {"labels": label_convention} if label_convention == "brats2024" else {}  # others: unchanged hashes
    blob = json.dumps({"task": task_name, "schema": SCHEMA_VERSION, "processing": PROCESSING_VERSION,
                       "prepare": settings, **labels}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _source_key(root: Path, path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return (str(path.relative_to(root)), int(st.st_size), int(st.st_mtime_ns))


def up_to_date(record: dict[str, Any] | None, source: CaseSource, root: Path, fp: str, work: Path) -> bool:
    if not record or record.get("fingerprint") != fp or record.get("group") != source.group:
        return False
    roles = {m: p for m, p in source.images.items() if p is not None}
    if source.label is not None:
        roles["label"] = source.label
    sources = record.get("sources", {})
    if set(sources) != set(roles):
        return False
    try:
        for role, path in roles.items():
            s = sources[role]
            if (s.get("relpath"), s.get("bytes"), s.get("mtime_ns")) != _source_key(root, path):
                return False
    except OSError:
        return False
    arrays = [record[stage][kind]["path"] for stage in store.STAGES for kind in ("image", "label") if kind in record[stage]]
    return all((work / rel).is_file() for rel in arrays)


# worker side ---------------------------------------------------------------------------------
def _init_worker(threads: int) -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _work(source: CaseSource, task_name: str, cfg_json: dict[str, Any], root: str, work: str,
          fp: str) -> tuple[str, dict[str, Any] | None, str | None]:
    from data_prepare.process import process_case

    try:
        cfg = PrepareSection.model_validate(cfg_json)
        record = process_case(source, get_task(task_name), cfg, Path(work), fp)
        record["worker_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        for _role, info in record["sources"].items():
            key = _source_key(Path(root), Path(info["path"]))
            info["relpath"] = key[0]
        return source.case_id, record, None
    except SegpipeError as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return source.case_id, None, reason
    except MemoryError:
        return source.case_id, None, "out of memory"
    except Exception as exc:  # a bug or an unforeseen file problem must not stop the other cases
        log.debug("case %s", source.case_id, exc_info=True)
        return source.case_id, None, f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _results(todo: list[CaseSource], workers: int, args: tuple[Any, ...]) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """Process `todo` with at most `workers` cases in flight; yield results as they finish."""
    ctx = mp.get_context("spawn")  # no fork: the parent may hold threads (torch, LMDB)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pending = deque(todo)
    suspects: list[CaseSource] = []
    while pending or suspects:
        for source in suspects:  # alone, so a crash is attributable
            with ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as ex:
                try:
                    yield ex.submit(_work, source, *args).result()
                except BrokenProcessPool:
                    yield source.case_id, None, "worker process died on this case (killed, out of memory or crashed)"
        suspects = []
        if not pending:
            break
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as ex:
            inflight: dict[Future[Any], CaseSource] = {}
            broken = False
            while (pending and not broken) or inflight:
                while pending and not broken and len(inflight) < workers:
                    source = pending.popleft()
                    inflight[ex.submit(_work, source, *args)] = source
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    source = inflight.pop(fut)
                    try:
                        yield fut.result()
                    except BrokenProcessPool:
                        broken = True
                        suspects.append(source)
            if broken:
                log.warning("a worker process died; retrying %d case(s) one at a time", len(suspects))


# the run ---------------------------------------------------------------------------------------
def _failure_table(failed: list[dict[str, str]]) -> str:
    width = max(len("case"), *(len(f["case"]) for f in failed))
    lines = [f"{'case'.ljust(width)}  reason", f"{'-' * width}  ------"]
    lines += [f"{f['case'].ljust(width)}  {f['reason']}" for f in failed]
    return "\n".join(lines)


def run_prepare(data: str | Path, work: str | Path, cfg: PrepareSection, *, task: str | None = None,
                workers: int | None = None, label_convention: str | None = None) -> PrepareOutcome:
    started = time.perf_counter()
    root, work = Path(data).resolve(), Path(work).resolve()
    if work == root or root in work.parents:
        raise SegpipeError(f"work folder {work} is inside the data folder {root}; the data folder is never written")
    disc: Discovery = discover(root, cfg.layout, task, cfg.label_map, label_convention)
    spec = get_task(disc.task)
    fp = fingerprint(spec.name, cfg, label_convention if spec.name == "brats" else None)
    workers = max(1, workers or cfg.workers)
    # read now (headers only): package copies it into the weights' manifest
    training_data = training_data_record(root, [next(p for p in c.images.values() if p is not None)
                                                for c in disc.cases if any(c.images.values())])
    log.info("%s layout, task %s: %d cases found in %s (%s)", disc.layout, spec.name, len(disc.cases), root,
             "; ".join(disc.notes) or "-")
    work.mkdir(parents=True, exist_ok=True)
    failed = [{"case": cid, "reason": reason} for cid, reason in disc.problems]
    with _exclusive(work), CaseIndex(work, writable=True) as index:
        previous = index.get_meta("prepare")
        if previous and previous.get("task") != spec.name:
            raise SegpipeError(f"work folder {work} holds a {previous.get('task')} index; use another --work for {spec.name}")
        index.set_meta("prepare", {**(previous or {}), "task": spec.name, "complete": False})
        existing = index.records()
        wanted = {c.case_id for c in disc.cases}
        stale = sorted(set(existing) - wanted)
        if stale:
            log.warning("removing %d index record(s) with no case in %s: %s", len(stale), root, ", ".join(stale[:5]))
            index.delete(stale)
        store.sweep(work, _referenced({k: v for k, v in existing.items() if k in wanted}))
        todo = [c for c in disc.cases if not up_to_date(existing.get(c.case_id), c, root, fp, work)]
        skipped = len(disc.cases) - len(todo)
        if skipped:
            log.info("%d case(s) already prepared with this config, %d to do", skipped, len(todo))
        args = (spec.name, cfg.model_dump(mode="json"), str(root), str(work), fp)
        done = 0
        written: list[int] = []
        todo_ids = {c.case_id for c in todo}
        kept = [b for c in wanted - todo_ids if c in existing and (b := store.record_bytes(existing[c]))]
        probe = min(len(todo), max(SIZE_PROBE_CASES, workers))
        if todo and kept:  # sizes of this config's cases already on disk: project before starting
            _check_space(work, statistics.mean(kept), len(todo), f"{len(kept)} prepared case(s)")
        elif len(todo) > probe:
            log.info("%d case(s) to prepare; the disk space they need is projected after the first %d",
                     len(todo), probe)
        t_cases = time.perf_counter()
        for case_id, record, reason in progress(_results(todo, workers, args), total=len(todo), desc="prepare"):
            if record is not None:
                index.put(record)
                done += 1
                written.append(store.record_bytes(record))
                if done == probe < len(todo):
                    _check_space(work, statistics.mean(written), len(todo) - done, f"the first {done}")
            else:
                index.delete([case_id])
                failed.append({"case": case_id, "reason": reason or "unknown"})
                log.warning("case %s failed: %s", case_id, reason)
        case_seconds = time.perf_counter() - t_cases
        records = index.records()
        summary = splits_mod.split_summary(records, cfg.folds, cfg.seed)
        with index.write() as txn:
            for cid, rec in records.items():
                fold = summary["fold_of"].get(cid)
                if rec.get("split") != rec["group"] or rec.get("fold") != fold:
                    txn.put({**rec, "split": rec["group"], "fold": fold})
            txn.set_meta("splits", summary)
            txn.set_meta("prepare", {
                "task": spec.name, "layout": disc.layout, "data": str(root), "fingerprint": fp,
                "config": cfg.model_dump(mode="json"), "complete": True, "cases": len(records),
                "failed": len(failed), "segpipe": __version__, "schema": SCHEMA_VERSION,
                "sample_format": SAMPLE_FORMAT, "training_data": training_data,
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            })
        store.sweep(work, _referenced(records))
    sizes = [b for r in records.values() if (b := store.record_bytes(r))]
    report = {
        "data": str(root), "work": str(work), "layout": disc.layout, "task": spec.name,
        "discovered": len(disc.cases), "prepared": done, "skipped": skipped, "indexed": len(records),
        "failed": failed, "removed_stale": stale, "workers": workers,
        "seconds": round(time.perf_counter() - started, 2),
        "cases_per_minute": round(60.0 * done / case_seconds, 2) if done and case_seconds > 0 else None,
        "sample_bytes_written": sum(written),
        "sample_bytes": sum(sizes), "sample_bytes_per_case": round(statistics.mean(sizes)) if sizes else None,
        "worker_peak_rss_mib": max((r.get("worker_peak_rss_mib", 0) for r in records.values()), default=None),
        "splits": {"folds": summary["folds"], "labeled": len(summary["labeled"]),
                   "unlabeled": len(summary["unlabeled"]), "test": len(summary["test"])},
        "fingerprint": fp, "config": cfg.model_dump(mode="json"), "training_data": training_data,
    }
    atomic_write_text(work / REPORT_NAME, json.dumps(report, indent=2) + "\n")
    return PrepareOutcome(report, failed)


def _check_space(work: Path, per_case: float, cases: int, measured_on: str) -> None:
    """Log the projected size of `cases` more cases; stop (resumably) if the disk cannot hold them."""
    need, free = per_case * cases, shutil.disk_usage(work).free
    log.info("samples: %.1f MB per case (measured on %s) → %d more case(s) need ~%s; %s free in %s",
             per_case / 1e6, measured_on, cases, _size(need), _size(free), work)
    if need > free:
        raise SegpipeError(f"the remaining {cases} case(s) need ~{_size(need)} ({per_case / 1e6:.1f} MB per case, "
                           f"measured on {measured_on}) but {work} has {_size(free)} free: free space or use "
                           "another --work (prepare resumes where it stopped)")


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


@contextlib.contextmanager
def _exclusive(work: Path) -> Iterator[None]:
    """One prepare per work folder at a time (the kernel drops the lock if the process dies)."""
    with open(work / LOCK_NAME, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SegpipeError(f"another segpipe prepare is running on {work}") from None
        yield


def _referenced(records: dict[str, dict[str, Any]]) -> set[str]:
    out = set()
    for rec in records.values():
        for stage in store.STAGES:
            for kind in ("image", "label"):
                info = rec.get(stage, {}).get(kind)
                if info:
                    out.add(info["path"])
    return out


def print_summary(outcome: PrepareOutcome, stream: Any = None) -> None:
    stream = stream or sys.stdout
    r = outcome.report
    rate = f", {r['cases_per_minute']} cases/min" if r["cases_per_minute"] else ""
    print(f"prepare: {r['indexed']} cases indexed ({r['prepared']} prepared, {r['skipped']} up to date, "
          f"{len(outcome.failed)} failed) in {r['seconds']} s{rate}; splits: {r['splits']}", file=stream)
    if r.get("sample_bytes_per_case"):
        print(f"samples: {_size(r['sample_bytes'])} on disk, {r['sample_bytes_per_case'] / 1e6:.1f} MB per case "
              f"({_size(r['sample_bytes_written'])} written by this run)", file=stream)
    if outcome.failed:
        print(f"failed cases ({len(outcome.failed)}):", file=stream)
        print(_failure_table(outcome.failed), file=stream)
    print(f"report: {Path(r['work']) / REPORT_NAME}", file=stream)
