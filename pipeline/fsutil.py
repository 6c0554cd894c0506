"""Filesystem primitives: atomic writes and case ids that are safe to turn into paths.

Every file segpipe produces appears under its final name only when complete, so a kill at
any moment leaves either the old file, the new file, or nothing — never a partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import SegpipeError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the process umask, restored immediately
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_case_id(case_id: str) -> str:
    """Return `case_id` if it can be used as a single path component, else raise.

    Case ids come from file names and manifests we do not control; they must never
    smuggle a separator, `..` or a leading dot into an output path.
    """
    if not isinstance(case_id, str) or not _CASE_ID.match(case_id) or ".." in case_id:
        raise SegpipeError(f"unsafe case id {case_id!r}: use letters, digits, '.', '_' or '-' only")
    return case_id


def safe_child(root: str | os.PathLike[str], name: str) -> Path:
    """`root/name` for a checked single-component name, guaranteed to stay inside `root`."""
    root_path = Path(root).resolve()
    child = (root_path / check_case_id(name)).resolve()
    if child.parent != root_path:
        raise SegpipeError(f"{name!r} escapes {root_path}")
    return child


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path with the same suffixes; rename it over `path` on success.

    The temp name keeps the full suffix (e.g. `.nii.gz`) so writers that pick the format
    from the extension (SimpleITK, numpy) behave as for the final name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".part{suffix}", dir=final.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from other users (containers!)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # writers that replace the file (safetensors ≥ 0.5) create it 0600
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
