"""Efficiency measured the FLARE way (`FLARE22/Evaluation/{resource_eval,Efficiency,load_json}.py`).

What the organisers do, and what this module reproduces:
- every case is copied *alone* into a fresh `inputs/` folder and a fresh container runs
  `docker container run --gpus="device=1" --rm -v $PWD/inputs/:/workspace/inputs/
  -v $PWD/outputs/:/workspace/outputs/ team:latest /bin/bash -c "sh predict.sh"`; no network
  or shm options (docker's defaults: bridge network, 64 MB /dev/shm; FLARE23/24 add
  `--shm-size=28gb -m 28G`, both are parameters here);
- Time = wall clock of the whole `docker run`, start-up and removal included;
- a sampler reads, every 0.1 s, the GPU memory of the *whole device* (total − free, MB) and
  the CPU utilisation from psutil's system-wide user/system/idle deltas, with the organisers'
  formula `used = 100 − 100·Δidle / (Δtotal + 0.1)`;
- max GPU = the largest value seen in more than 2% of the samples; AUC-GPU = Σ mem · 0.1
  (MB·s); AUC-CPU = Σ used · 0.1; FLARE22 grants 2 GB free of charge, reported as
  `auc_gpu_over_2gb` = Σ max(0, mem − 2048) · 0.1;
- a stuck container scores Time 3600, AUC-GPU 29,491,200, AUC-CPU 360,000 (and DSC/NSD 0).

Without nvidia-smi the GPU figures are `null` with the reason, never zero.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import SegpipeError
from pipeline.fsutil import atomic_write_text, check_case_id, safe_child
from pipeline.image_io import image_suffix, strip_image_suffix
from pipeline.log import get_logger

log = get_logger("evaluate.efficiency")

FLARE_COMMAND: tuple[str, ...] = ("/bin/bash", "-c", "sh predict.sh")
CONTAINER_INPUTS = "/workspace/inputs"
CONTAINER_OUTPUTS = "/workspace/outputs"
GPU_ALLOWANCE_MB = 2048.0
FREQUENT_SHARE = 0.02  # a GPU value counts for "max" only when seen in more than 2% of samples
# the organisers' scores for a container that does not finish (flare22.grand-challenge.org/Evaluation)
STUCK_SCORES: dict[str, float] = {"time_s": 3600.0, "auc_gpu": 29_491_200.0, "auc_cpu": 360_000.0}


# --------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------
class GpuMemoryProbe:
    """Used memory of one whole device via nvidia-smi (every process counts, as FLARE's)."""

    def __init__(self, index: int = 0, executable: str = "nvidia-smi") -> None:
        self.index = index
        self.executable = executable

    def read(self) -> float | None:
        try:
            out = subprocess.run(
                [self.executable, "--query-gpu=memory.total,memory.free", "--format=csv,noheader,nounits", f"--id={self.index}"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout
            total, free = (float(v) for v in out.strip().splitlines()[0].split(","))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None
        return total - free

    @classmethod
    def detect(cls, index: int = 0) -> tuple[GpuMemoryProbe | None, str]:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return None, "nvidia-smi not found (no NVIDIA driver on this machine)"
        probe = cls(index, exe)
        if probe.read() is None:
            return None, f"nvidia-smi cannot query GPU {index}"
        return probe, f"GPU {index} via nvidia-smi"


class CpuProbe:
    """System-wide CPU utilisation with the organisers' formula (their +0.1 included)."""

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:
            raise SegpipeError("efficiency needs psutil: pip install 'segpipe[evaluate]'") from None

        self._psutil = psutil
        self._before = self._times()

    def _times(self) -> tuple[float, float, float]:
        t = self._psutil.cpu_times()
        return t.user, t.system, t.idle

    def read(self) -> float:
        now = self._times()
        delta = [a - b for a, b in zip(now, self._before, strict=True)]
        self._before = now
        idle_share = 100.0 * delta[2] / (sum(delta) + 0.1)
        return 100.0 - idle_share

    def ram_mb(self) -> float:
        return self._psutil.virtual_memory().used / 1048576


@dataclass
class Timeline:
    interval: float
    t: list[float] = field(default_factory=list)
    gpu_mb: list[float | None] | None = field(default_factory=list)  # None: no GPU probe
    cpu: list[float] = field(default_factory=list)
    ram_mb: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        r = 3
        return {
            "interval": self.interval,
            "t": [round(v, r) for v in self.t],
            "gpu_mb": None if self.gpu_mb is None else [None if v is None else round(v, 1) for v in self.gpu_mb],
            "cpu": [round(v, 2) for v in self.cpu],
            "ram_mb": [round(v, 1) for v in self.ram_mb],
        }


class Sampler:
    """Samples on a fixed 0.1 s schedule in a daemon thread for as long as a case runs."""

    def __init__(self, interval: float, gpu: GpuMemoryProbe | None) -> None:
        self.timeline = Timeline(interval, gpu_mb=[] if gpu is not None else None)
        self._gpu = gpu
        self._cpu = CpuProbe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="efficiency-sampler", daemon=True)

    def _loop(self) -> None:
        t0 = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            tl = self.timeline
            tl.t.append(time.monotonic() - t0)
            if tl.gpu_mb is not None and self._gpu is not None:
                tl.gpu_mb.append(self._gpu.read())
            tl.cpu.append(self._cpu.read())
            tl.ram_mb.append(self._cpu.ram_mb())
            tick += 1
            self._stop.wait(max(0.0, t0 + tick * tl.interval - time.monotonic()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def summarise(timeline: Timeline) -> dict[str, float | None]:
    """The organisers' figures from one case's samples."""
    dt = timeline.interval
    out: dict[str, float | None] = {}
    gpu = None if timeline.gpu_mb is None else [v for v in timeline.gpu_mb if v is not None]
    if gpu:
        counts = Counter(gpu)
        frequent = [v for v, n in counts.items() if n > FREQUENT_SHARE * len(gpu)]
        # no value repeats often enough (very short runs): the organisers' code would fail; take the plain max
        out["max_gpu_mb"] = max(frequent) if frequent else max(gpu)
        out["auc_gpu"] = sum(gpu) * dt
        out["auc_gpu_over_2gb"] = sum(max(0.0, v - GPU_ALLOWANCE_MB) for v in gpu) * dt
    else:
        out["max_gpu_mb"] = out["auc_gpu"] = out["auc_gpu_over_2gb"] = None
    out["max_cpu"] = max(timeline.cpu) if timeline.cpu else None
    out["auc_cpu"] = sum(timeline.cpu) * dt
    out["max_ram_mb"] = max(timeline.ram_mb) if timeline.ram_mb else None
    out["auc_ram"] = sum(timeline.ram_mb) * dt
    return out


# --------------------------------------------------------------------------------------
# running one case
# --------------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    exit_code: int | None
    timed_out: bool
    wall_s: float
    log_tail: str = ""
    error: str | None = None  # the engine refused (bad image, GPU not available, ...)


def gpu_index(gpus: str | None) -> int:
    """The device the sampler watches: the first one `--gpus device=...` names, else 0."""
    if gpus and gpus.startswith("device="):
        first = gpus.split("=", 1)[1].strip("\"'").split(",")[0].strip()
        if first.isdigit():
            return int(first)
    return 0


def _tail(data: bytes | str, limit: int = 4000) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text[-limit:]


def run_container(client: Any, kwargs: dict[str, Any], time_limit: float | None) -> RunOutcome:
    """create → start → wait (killed at the limit) → logs → remove, timed as one `docker run`."""
    import docker
    import requests

    t0 = time.perf_counter()
    try:
        container = client.containers.create(**kwargs)
    except docker.errors.DockerException as exc:
        return RunOutcome(None, False, time.perf_counter() - t0, error=_api_message(exc))
    timed_out, exit_code, error, logs = False, None, None, b""
    try:
        container.start()
        try:
            status = container.wait(timeout=time_limit) if time_limit else container.wait()
            exit_code = int(status.get("StatusCode", -1))
        except requests.exceptions.RequestException:
            timed_out = True
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                container.kill()
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            logs = container.logs(stdout=True, stderr=True)
    except docker.errors.DockerException as exc:
        error = _api_message(exc)
    finally:
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            container.remove(force=True)
    return RunOutcome(exit_code, timed_out, time.perf_counter() - t0, _tail(logs), error)


def _api_message(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return " ".join(str(explanation or exc).split())


def run_local(predict_sh: Path, workdir: Path, time_limit: float | None) -> RunOutcome:
    """`sh predict.sh` as a plain process in a folder holding `inputs/` and `outputs/`; the
    script also gets their paths as SEGPIPE_INPUTS / SEGPIPE_OUTPUTS."""
    env = dict(os.environ, SEGPIPE_INPUTS=str(workdir / "inputs"), SEGPIPE_OUTPUTS=str(workdir / "outputs"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["sh", str(predict_sh)], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=time_limit)
        return RunOutcome(proc.returncode, False, time.perf_counter() - t0, _tail(out))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return RunOutcome(None, True, time.perf_counter() - t0, _tail(out))


@dataclass(frozen=True)
class Limits:
    """What each case may use. A case still running after `time_s` is killed and scored as
    stuck; `shm_size`/`memory` are docker's (`--shm-size`, `-m`; FLARE23/24: 28g each)."""

    time_s: float | None = 3600.0
    shm_size: str | None = None
    memory: str | None = None


@dataclass
class DockerImage:
    """Each case in a fresh container of `image`, the organisers' `docker run`."""

    client: Any
    image: str
    gpus: str | None = "auto"  # auto | all | none | N | device=I[,J]
    network: str | None = None  # docker's default bridge, as the organisers
    command: tuple[str, ...] = FLARE_COMMAND
    mode = "docker"

    @classmethod
    def connect(cls, image: str, **kwargs: Any) -> DockerImage:
        """The engine of DOCKER_HOST, with `image` already loaded on it."""
        from pipeline.docker_engine import connect, require_image

        client = connect(hint="set DOCKER_HOST or use --local")
        require_image(client, image, "docker load < team.tar.gz first")
        return cls(client, image, **kwargs)

    def gpu_index(self) -> int:
        return gpu_index(self.gpus)

    def run(self, workdir: Path, limits: Limits) -> RunOutcome:
        from pipeline.docker_engine import container_kwargs

        kwargs = container_kwargs(
            image=self.image, command=list(self.command), name=f"segpipe-eff-{workdir.name}",
            volumes=[f"{workdir / 'inputs'}:{CONTAINER_INPUTS}", f"{workdir / 'outputs'}:{CONTAINER_OUTPUTS}"],
            gpus=self.gpus, shm_size=limits.shm_size, memory=limits.memory, network=self.network,
        )
        return run_container(self.client, kwargs, limits.time_s)

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "image": self.image, "predict_sh": None, "command": list(self.command),
                "gpus": self.gpus, "network": self.network}


@dataclass
class LocalScript:
    """Each case through `sh predict.sh` as a plain process (no container, no docker limits)."""

    predict_sh: Path
    mode = "local"

    def __post_init__(self) -> None:
        self.predict_sh = Path(self.predict_sh)
        if not self.predict_sh.is_file():
            raise SegpipeError(f"--local {self.predict_sh}: no such file")

    def gpu_index(self) -> int:
        return 0

    def run(self, workdir: Path, limits: Limits) -> RunOutcome:
        return run_local(self.predict_sh.resolve(), workdir, limits.time_s)

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "image": None, "predict_sh": str(self.predict_sh),
                "command": ["sh", str(self.predict_sh)], "gpus": None, "network": None}


CaseRunner = DockerImage | LocalScript


# --------------------------------------------------------------------------------------
# the whole measurement
# --------------------------------------------------------------------------------------
def discover_cases(inputs: str | Path) -> list[tuple[str, Path]]:
    """Cases in an input folder: each image file (`<case>_0000.nii.gz` → `<case>`), and each
    sub-folder (a multi-file case such as BraTS) as one case."""
    folder = Path(inputs)
    if not folder.is_dir():
        raise SegpipeError(f"inputs folder {folder}: not a directory")
    cases: list[tuple[str, Path]] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            cases.append((check_case_id(path.name), path))
        elif image_suffix(path) is not None:
            stem = strip_image_suffix(path)
            cases.append((check_case_id(stem[:-5] if stem.endswith("_0000") else stem), path))
    if not cases:
        raise SegpipeError(f"inputs folder {folder}: no image files or case folders")
    return cases


def _stage_case(source: Path, workdir: Path) -> None:
    inputs, outputs = workdir / "inputs", workdir / "outputs"
    inputs.mkdir()
    outputs.mkdir()
    target = inputs / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    # the container may run as any uid (segpipe's runs as 1000): let it read and write
    for root, dirs, files in os.walk(inputs):
        os.chmod(root, 0o755)
        for d in dirs:
            os.chmod(Path(root) / d, 0o755)
        for f in files:
            os.chmod(Path(root) / f, 0o644)
    os.chmod(outputs, 0o777)


def _collect_outputs(workdir: Path, dest: Path | None) -> list[str]:
    produced = sorted(p for p in (workdir / "outputs").iterdir() if p.is_file())
    kept = []
    for p in produced:
        if dest is not None:
            try:
                target = safe_child(dest, p.name)
            except SegpipeError as exc:  # a name we will not turn into a path: report, keep going
                log.warning("output %r not collected: %s", p.name, exc)
                continue
            dest.mkdir(parents=True, exist_ok=True)
            shutil.move(str(p), target)
        kept.append(p.name)
    return kept


def _case_record(case: str, outcome: RunOutcome, timeline: Timeline, outputs: list[str]) -> dict[str, Any]:
    measured: dict[str, Any] = {"time_s": outcome.wall_s, **summarise(timeline)}
    if outcome.error:
        status, detail = "error", outcome.error
    elif outcome.timed_out:
        status, detail = "timeout", "killed at the time limit; scored as a stuck container"
    elif outcome.exit_code != 0:
        last = next((ln for ln in reversed(outcome.log_tail.splitlines()) if ln.strip()), "")
        status, detail = "failed", f"exit code {outcome.exit_code}" + (f": {last.strip()[:200]}" if last else "")
    elif not outputs:
        status, detail = "no-output", "exited 0 but wrote nothing to outputs/"
    else:
        status, detail = "ok", None
    record: dict[str, Any] = {"case": case, "status": status}
    if detail:
        record["error"] = detail
    scored = dict(measured)
    if outcome.timed_out:
        scored.update(STUCK_SCORES)
        record["measured"] = measured
    record |= scored
    record |= {"exit_code": outcome.exit_code, "outputs": outputs, "log_tail": outcome.log_tail,
               "timeline": timeline.to_json()}
    return record


FIGURES = ("time_s", "max_gpu_mb", "auc_gpu", "auc_gpu_over_2gb", "max_cpu", "auc_cpu", "max_ram_mb", "auc_ram")


def measure(inputs: str | Path, runner: CaseRunner, limits: Limits = Limits(), *, outputs: str | Path | None = None,
            interval: float = 0.1, gt_dir: str | Path | None = None, workers: int = 2) -> dict[str, Any]:
    """Run every case alone through `runner`, as the organisers do, and return the efficiency
    document; with `gt_dir` the collected outputs are scored too (FLARE DSC/NSD)."""
    cases = discover_cases(inputs)
    if interval <= 0:
        raise SegpipeError("--interval must be positive")
    probe, gpu_reason = GpuMemoryProbe.detect(runner.gpu_index())
    if probe is None:
        log.warning("GPU figures unavailable: %s", gpu_reason)
    dest = Path(outputs) if outputs else None
    if dest is not None and dest.is_dir() and any(dest.iterdir()):
        raise SegpipeError(f"--outputs {dest}: not empty (old predictions would mix with this run's)")
    scratch = Path(tempfile.mkdtemp(prefix="segpipe-efficiency-"))
    collect = dest or (scratch / "collected" if gt_dir else None)
    t_all = time.perf_counter()
    try:
        records = [_measure_case(case, source, scratch, runner, limits, (interval, probe), collect)
                   for case, source in cases]
        about = runner.describe()
        results: dict[str, Any] = {
            "task": "efficiency", **{k: about[k] for k in ("mode", "image", "predict_sh", "command")},
            "settings": {"gpus": about["gpus"], "time_limit_s": limits.time_s, "shm_size": limits.shm_size,
                         "memory": limits.memory, "network": about["network"], "interval_s": interval,
                         "gpu_allowance_mb": GPU_ALLOWANCE_MB, "stuck_scores": STUCK_SCORES},
            "gpu": {"available": probe is not None, "source": gpu_reason},
            "cases": records,
            "mean": {k: _mean([r.get(k) for r in records]) for k in FIGURES},
            "total_time_s": time.perf_counter() - t_all,
        }
        if gt_dir is not None and collect is not None:
            from evaluation.flare import evaluate_flare

            results["accuracy"] = evaluate_flare(collect, gt_dir, workers=workers)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _measure_case(case: str, source: Path, scratch: Path, runner: CaseRunner, limits: Limits,
                  sampling: tuple[float, GpuMemoryProbe | None], collect: Path | None) -> dict[str, Any]:
    """One case staged alone in a fresh folder, run while sampled every `sampling[0]` s, its outputs collected."""
    workdir = scratch / f"{case}-{uuid.uuid4().hex[:8]}"
    workdir.mkdir()
    _stage_case(source, workdir)
    log.info("case %s: running", case)
    with Sampler(*sampling) as sampler:
        outcome = runner.run(workdir, limits)
    produced = [] if outcome.timed_out else _collect_outputs(workdir, collect)
    record = _case_record(case, outcome, sampler.timeline, produced)
    log.info("case %s: %s in %.1f s", case, record["status"], outcome.wall_s)
    shutil.rmtree(workdir, ignore_errors=True)
    return record


def _mean(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------
def format_efficiency(results: dict[str, Any]) -> str:
    def f(v: Any, fmt: str = "{:.1f}") -> str:
        return "n/a" if v is None else fmt.format(v)

    head = f"{'case':<24} {'status':<9} {'time s':>8} {'maxGPU MB':>10} {'AUC-GPU':>11} {'AUC-GPU>2G':>11} {'AUC-CPU':>9}"
    lines = [f"efficiency ({results['mode']}): {len(results['cases'])} case(s); GPU: {results['gpu']['source']}", head, "-" * len(head)]
    for r in results["cases"]:
        lines.append(
            f"{r['case'][:24]:<24} {r['status']:<9} {f(r['time_s'], '{:.2f}'):>8} {f(r['max_gpu_mb'], '{:.0f}'):>10} "
            f"{f(r['auc_gpu'], '{:.0f}'):>11} {f(r['auc_gpu_over_2gb'], '{:.0f}'):>11} {f(r['auc_cpu']):>9}"
        )
    m = results["mean"]
    lines.append("-" * len(head))
    lines.append(
        f"{'mean':<24} {'':<9} {f(m['time_s'], '{:.2f}'):>8} {f(m['max_gpu_mb'], '{:.0f}'):>10} "
        f"{f(m['auc_gpu'], '{:.0f}'):>11} {f(m['auc_gpu_over_2gb'], '{:.0f}'):>11} {f(m['auc_cpu']):>9}"
    )
    for r in results["cases"]:
        if r.get("error"):
            lines.append(f"{r['case']}: {r['status']}: {r['error']}")
    if results.get("accuracy"):
        from evaluation.results import format_table

        lines += ["", format_table(results["accuracy"])]
    return "\n".join(lines)


def efficiency_csv_text(results: dict[str, Any]) -> str:
    """One row per case in the organisers' `_Efficiency.csv` spirit, plus our extras."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "status", "exit_code", *FIGURES])
    for r in results["cases"]:
        writer.writerow([r["case"], r["status"], "" if r["exit_code"] is None else r["exit_code"],
                         *["" if r.get(k) is None else f"{r[k]:.6g}" for k in FIGURES]])
    return buf.getvalue()


def write_efficiency_csv(results: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(path, efficiency_csv_text(results))
