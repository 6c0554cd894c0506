"""The stage graph: prepare → train-coarse → train-fine → package → predict → evaluate → submit.

A stage is named after the `segpipe` command it runs: `package` (`segpipe package --no-image`:
WORK's trained stages → WORK/model_weights), `submit` (`segpipe submit`: the submission zip).

Each stage is a `segpipe` command line over named folders (data, work, input, output, gt,
config), so the same graph runs as local subprocesses or as containers of the project image
(pipeline.runners): only the folder → path mapping differs. A finished stage leaves
`WORK/.stages/<stage>.json` with a key = hash of its command, the config file's bytes, the
--set overrides, its input folders' listings and the keys of the stages before it; a rerun
skips a stage whose key matches, reruns it (and everything after it) when the config or the
data changed, and resumes a stage that was started with the same key but never finished
(prepare skips prepared cases by itself, train continues from its last checkpoint).
Until issue #17 those two stages were called `export` and `package`; a work folder with their
markers is migrated on its next run (migrate_markers), so what was up to date stays so.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import SegpipeError
from pipeline.fsutil import atomic_write_text
from pipeline.log import get_logger

log = get_logger("run")

STAGE_NAMES = ("prepare", "train-coarse", "train-fine", "package", "predict", "evaluate", "submit")
# stage → its name before issue #17 (markers written then are migrated by migrate_markers)
FORMER_NAMES = {"package": "export", "submit": "package"}
MARKER_DIR = ".stages"
WEIGHTS_SUBDIR = "model_weights"  # WORK/model_weights: what `package` writes and `predict` reads
ROLES = ("data", "work", "input", "output", "gt", "config")

# where each folder appears inside a container (the same as docker-compose.yml's services)
CONTAINER_PATHS = {
    "data": "/data", "work": "/work", "input": "/workspace/inputs", "output": "/workspace/outputs",
    "gt": "/gt", "config": "/config",
}


class StageFailed(SegpipeError):
    """A stage ended with a non-zero exit code; carries the code and the last lines of its log."""

    def __init__(self, stage: str, code: int, tail: Sequence[str] = ()) -> None:
        self.stage, self.code, self.tail = stage, int(code), list(tail)
        super().__init__(f"stage {stage} failed with exit code {code}")


@dataclass(frozen=True)
class Folders:
    """Host folders of one run; `config` is the config *file*."""

    work: Path
    config: Path
    data: Path | None = None
    input: Path | None = None
    output: Path | None = None
    gt: Path | None = None

    def get(self, role: str) -> Path | None:
        return getattr(self, role)


@dataclass(frozen=True)
class Ref:
    """A path inside one of the run's folders: rendered per backend by `render`."""

    role: str
    rel: str = ""


Arg = str | Ref


@dataclass(frozen=True)
class Stage:
    name: str
    argv: tuple[Arg, ...]  # segpipe arguments (without the program name)
    mounts: dict[str, str]  # role → "ro" | "rw": the folders the stage touches
    inputs: tuple[str, ...] = ()  # roles whose contents are part of the key (data, input, gt)
    resume_flag: str | None = None  # added when an interrupted run of the same key is continued
    shm: bool = False  # data-loader workers: give the container a large /dev/shm
    gpu: bool = False  # stage can use a GPU (docker backend with --gpus)
    outputs: tuple[Ref, ...] = ()  # a "done" stage whose outputs are gone runs again

    def render(self, path_of: Callable[[Ref], str], resume: bool = False) -> list[str]:
        out = [a if isinstance(a, str) else path_of(a) for a in self.argv]
        if resume and self.resume_flag:
            out.append(self.resume_flag)
        return out


def host_path(folders: Folders) -> Callable[[Ref], str]:
    def path_of(ref: Ref) -> str:
        base = folders.get(ref.role)
        if base is None:
            raise SegpipeError(f"no {ref.role} folder given")
        if ref.role == "config":
            return str(base)
        return str(base / ref.rel) if ref.rel else str(base)

    return path_of


def container_path(folders: Folders) -> Callable[[Ref], str]:
    def path_of(ref: Ref) -> str:
        if ref.role == "config":
            return f"{CONTAINER_PATHS['config']}/{folders.config.name}"
        base = CONTAINER_PATHS[ref.role]
        return f"{base}/{ref.rel}" if ref.rel else base

    return path_of


def build_graph(task: str, folders: Folders, overrides: Sequence[str] = (), *, label_convention: str = "2023",
                device: str = "auto", report: bool = True) -> list[Stage]:
    """The stages this run has folders for: without --data no prepare, without --input no predict,
    without --gt no evaluate. `report=False` leaves out evaluate's HTML report (it needs
    matplotlib, which the lean project image does not carry)."""
    cfg: tuple[Arg, ...] = ("--config", Ref("config"), *[x for o in overrides for x in ("--set", o)])
    weights = Ref("work", WEIGHTS_SUBDIR)
    stages = [
        Stage("prepare", ("prepare", "--data", Ref("data"), "--work", Ref("work"), *cfg),
              {"data": "ro", "work": "rw", "config": "ro"}, inputs=("data",), outputs=(Ref("work", "index.lmdb"),)),
        Stage("train-coarse", ("train", "coarse", "--work", Ref("work"), "--device", device, *cfg),
              {"work": "rw", "config": "ro"}, resume_flag="--resume", shm=True, gpu=True,
              outputs=(Ref("work", "train/coarse"),)),
        Stage("train-fine", ("train", "fine", "--work", Ref("work"), "--device", device, *cfg),
              {"work": "rw", "config": "ro"}, resume_flag="--resume", shm=True, gpu=True,
              outputs=(Ref("work", "train/fine"),)),
        Stage("package", ("package", "--task", task, "--from-work", Ref("work"), "--weights", weights, "--no-image"),
              {"work": "rw"}, outputs=(Ref("work", f"{WEIGHTS_SUBDIR}/manifest.json"),)),
        Stage("predict", ("predict", "-i", Ref("input"), "-o", Ref("output"), "--weights", weights,
                          "--device", device, *cfg),
              {"input": "ro", "output": "rw", "work": "ro", "config": "ro"}, inputs=("input",), gpu=True,
              outputs=(Ref("output"),)),
    ]
    if folders.gt is not None:
        ev: list[Arg] = ["evaluate", task, "--pred", Ref("output"), "--gt", Ref("gt"),
                         "--json", Ref("work", "metrics.json"), "--csv", Ref("work", "metrics.csv")]
        mounts = {"output": "ro", "gt": "ro", "work": "rw"}
        if report:
            ev += ["--report", Ref("work", "report")]
        if task == "brats":
            ev += ["--convention", label_convention]
        if report and folders.input is not None:  # the overlays' background images
            ev += ["--images", Ref("input")]
            mounts["input"] = "ro"
        stages.append(Stage("evaluate", tuple(ev), mounts, inputs=("gt",), outputs=(Ref("work", "metrics.json"),)))
    stages.append(Stage("submit", ("submit", "--task", task, "--pred", Ref("output"), "--input", Ref("input"),
                                    "--label-convention", label_convention,
                                    "--zip", Ref("work", f"submission/{task}.zip")),
                        {"output": "ro", "input": "ro", "work": "rw"},
                        outputs=(Ref("work", f"submission/{task}.zip"),)))
    present = {r for r in ROLES if folders.get(r) is not None}
    return [s for s in stages if set(s.mounts) <= present]


# keys and markers ---------------------------------------------------------------------------
def folder_listing(path: Path | None) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime ns) of every file: cheap, and changes when the data does."""
    if path is None or not path.exists():
        return []
    if path.is_file():
        st = path.stat()
        return [(path.name, st.st_size, st.st_mtime_ns)]
    out = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            p = Path(root, name)
            st = p.stat()
            out.append((str(p.relative_to(path)), st.st_size, st.st_mtime_ns))
    return out


def _key_argv(argv: Sequence[Arg]) -> list[str]:
    """The command as it enters the key: folders by role, and without --device (a CPU run
    resumed on a GPU is the same stage)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--device":
            skip = True
        else:
            out.append(a if isinstance(a, str) else f"<{a.role}>/{a.rel}")
    return out


def stage_key(stage: Stage, folders: Folders, previous: str, name: str | None = None) -> str:
    payload = {
        "stage": name or stage.name,
        "argv": _key_argv(stage.argv),
        "config": hashlib.sha256(folders.config.read_bytes()).hexdigest(),
        "inputs": {r: folder_listing(folders.get(r)) for r in stage.inputs},
        "previous": previous,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def marker_path(work: Path, stage: str) -> Path:
    return work / MARKER_DIR / f"{stage}.json"


def read_marker(work: Path, stage: str) -> dict[str, Any] | None:
    path = marker_path(work, stage)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(work: Path, stage: str, **fields: Any) -> None:
    path = marker_path(work, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(fields, indent=1) + "\n")


def migrate_markers(stages: list[Stage], folders: Folders) -> None:
    """Markers from before the rename (export → package, package → submit) move to the new names,
    and every marker whose key is the one the old names gave is re-keyed, once; no stage reruns."""
    work = folders.work
    if read_marker(work, "export") is None:
        return
    submit = read_marker(work, "package")  # under the old names: the submission stage
    if submit is not None:
        write_marker(work, "submit", **submit)
    write_marker(work, "package", **(read_marker(work, "export") or {}))
    marker_path(work, "export").unlink()
    old_previous = new_previous = ""
    for stage in stages:
        old_key = stage_key(stage, folders, old_previous, FORMER_NAMES.get(stage.name, stage.name))
        new_key = stage_key(stage, folders, new_previous)
        marker = read_marker(work, stage.name)
        if marker is not None and marker.get("key") == old_key:
            write_marker(work, stage.name, **{**marker, "key": new_key})
        old_previous, new_previous = old_key, new_key
    log.info("%s: stage markers renamed (export → package, package → submit)", work / MARKER_DIR)


# running -----------------------------------------------------------------------------------
Runner = Callable[[Stage, Folders, bool], None]  # (stage, folders, resume) → raises StageFailed


@dataclass
class StageResult:
    name: str
    status: str  # done | skipped | resumed
    seconds: float = 0.0


@dataclass
class GraphResult:
    results: list[StageResult] = field(default_factory=list)

    def ran(self) -> list[str]:
        return [r.name for r in self.results if r.status != "skipped"]


def select(stages: list[Stage], start: str | None, stop: str | None) -> tuple[int, int]:
    names = [s.name for s in stages]
    for given in (start, stop):
        if given is not None and given not in names:
            raise SegpipeError(f"unknown stage {given!r} for this run; stages: {', '.join(names)}")
    i = names.index(start) if start else 0
    j = names.index(stop) if stop else len(names) - 1
    if i > j:
        raise SegpipeError(f"--from {start} comes after --to {stop}")
    return i, j


def run_graph(stages: list[Stage], folders: Folders, runner: Runner, *, start: str | None = None,
              stop: str | None = None, backend: str = "local") -> GraphResult:
    """Run stages[start..stop] in order; `--from` forces its stage and the later ones to rerun."""
    i, j = select(stages, start, stop)
    work = folders.work
    work.mkdir(parents=True, exist_ok=True)
    migrate_markers(stages, folders)
    result = GraphResult()
    previous = ""
    forced = start is not None
    for n, stage in enumerate(stages[: j + 1]):
        key = stage_key(stage, folders, previous)
        previous = key
        if n < i:
            if (read_marker(work, stage.name) or {}).get("status") != "done":
                log.warning("%s: before --from and not marked done; assuming its outputs are in place", stage.name)
            continue
        marker = read_marker(work, stage.name) or {}
        same = marker.get("key") == key
        present = all(Path(host_path(folders)(ref)).exists() for ref in stage.outputs)
        if same and marker.get("status") == "done" and not forced and present:
            log.info("[%d/%d] %s: up to date, skipped", n + 1, len(stages), stage.name)
            result.results.append(StageResult(stage.name, "skipped"))
            continue
        resume = same and marker.get("status") == "running"
        # the stages after this one are stale from now on (their keys chain on this one)
        for later in stages[n:]:
            m = read_marker(work, later.name)
            if m and m.get("status") == "done" and later is not stage:
                write_marker(work, later.name, **{**m, "status": "stale"})
        verb = "resuming" if resume else "running"
        log.info("[%d/%d] %s: %s (%s backend)", n + 1, len(stages), stage.name, verb, backend)
        t0 = time.perf_counter()
        write_marker(work, stage.name, status="running", key=key, backend=backend,
                     started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        try:
            runner(stage, folders, resume)
        except StageFailed as exc:
            write_marker(work, stage.name, status="running", key=key, backend=backend, failed=exc.code)
            raise
        dt = time.perf_counter() - t0
        write_marker(work, stage.name, status="done", key=key, backend=backend, seconds=round(dt, 1),
                     finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        log.info("[%d/%d] %s: done in %.1f s", n + 1, len(stages), stage.name, dt)
        result.results.append(StageResult(stage.name, "resumed" if resume else "done", dt))
    return result


def describe(stages: list[Stage], folders: Folders) -> list[str]:
    """One line per stage: its state and its command line on this host."""
    migrate_markers(stages, folders)
    lines, previous = [], ""
    for stage in stages:
        key = stage_key(stage, folders, previous)
        previous = key
        m = read_marker(folders.work, stage.name) or {}
        state = m.get("status", "pending") if m.get("key") == key else ("changed" if m else "pending")
        lines.append(f"{stage.name:13s} {state:8s} segpipe {' '.join(stage.render(host_path(folders)))}")
    return lines
