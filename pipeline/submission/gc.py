"""Upload a checked prediction folder to grand-challenge.org through gcapi (optional extra
`segpipe[submit]`). Dry run unless a token is given: the plan (target, files, sizes) is printed
and nothing leaves the machine. The base URL can point at any server (tests use a local one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import SegpipeError

DEFAULT_URL = "https://grand-challenge.org/api/v1/"


@dataclass
class UploadPlan:
    archive: str
    files: list[Path]
    base_url: str = DEFAULT_URL
    socket: str = "generic-medical-image"  # the archive's image socket (interface) slug

    def lines(self) -> list[str]:
        total = sum(p.stat().st_size for p in self.files)
        return [f"grand-challenge: {len(self.files)} file(s), {total / 2**20:.1f} MiB → archive {self.archive!r} "
                f"(socket {self.socket!r}) at {self.base_url}", *(f"  {p.name}" for p in self.files)]


def upload(plan: UploadPlan, token: str | None, client_factory: Any = None, spec_factory: Any = None) -> list[Any]:
    """Dry run without a token (returns []); with one, one archive item per file through
    gcapi's `Client(token, base_url).add_case_to_archive` (gcapi ≥ 0.13; titled by file name)."""
    if not token:
        return []
    if client_factory is None or spec_factory is None:
        try:
            from gcapi import Client, SocketValueSpec
        except ImportError:
            raise SegpipeError("--grand-challenge with a token needs gcapi: pip install 'segpipe[submit]'") from None
        client_factory = client_factory or Client
        spec_factory = spec_factory or SocketValueSpec
    try:  # gcapi's client already talks to the server when it is built (version check)
        client = client_factory(token=token, base_url=plan.base_url)
    except Exception as exc:
        raise SegpipeError(f"grand-challenge API at {plan.base_url}: {' '.join(str(exc).split())[:200]}") from None
    items = []
    for path in plan.files:
        try:
            items.append(client.add_case_to_archive(
                archive_slug=plan.archive, values=[spec_factory(socket_slug=plan.socket, file=str(path.resolve()))],
                title=path.name))
        except Exception as exc:  # gcapi raises httpx errors; the message is what the user needs
            raise SegpipeError(f"grand-challenge upload of {path.name} to {plan.archive!r} failed: "
                               f"{' '.join(str(exc).split())[:200]}") from None
    return items


def model_tarball(weights: Path, dest: Path) -> Path:
    """The model tarball an algorithm's "Models" page takes: the weights folder's files at the
    archive root (grand-challenge extracts it to /opt/ml/model, where `segpipe entry` finds the
    manifest). Sorted entries, fixed owner and times: the same weights give the same bytes."""
    import gzip
    import tarfile

    from pipeline.fsutil import atomic_path

    files = sorted(p for p in weights.rglob("*") if p.is_file())
    if not files:
        raise SegpipeError(f"{weights}: no weight files to pack")
    with atomic_path(dest) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in files:
            info = tar.gettarinfo(str(path), arcname=path.relative_to(weights).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return dest
