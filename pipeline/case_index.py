"""The LMDB case index: one msgpack record per case plus a few metadata entries.

Shared by prepare (writer), training and prediction (readers) and the stage graph. Values are
msgpack maps of plain types (never pickle): `encode` refuses anything else, so a numpy scalar
or an object sneaking into a record fails loudly at write time instead of producing a value a
reader cannot decode. Every write is one LMDB transaction: after a kill the index holds either
the old or the new record, never half of one.

Layout of `WORK/index.lmdb/` (an LMDB environment directory):
- database `cases`: case id (utf-8) → record
- database `meta`:  `schema` → SCHEMA_VERSION, plus stage-level entries (`prepare`, `splits`, ...)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgpack

from pipeline.errors import SegpipeError
from pipeline.fsutil import check_case_id

SCHEMA_VERSION = 1
INDEX_DIRNAME = "index.lmdb"
_INITIAL_MAP_SIZE = 1 << 30  # virtual; the file only grows as records are written
_PLAIN = (str, int, bool, type(None))


class CaseIndexError(SegpipeError):
    """The case index is missing, of another schema version, or holds an undecodable value."""


def _check_plain(value: Any, where: str = "record") -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: non-finite float {value!r}")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a plain msgpack type")


def encode(value: Any) -> bytes:
    _check_plain(value)
    return msgpack.packb(value, use_bin_type=True)


def decode(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


class Transaction:
    """Write access inside one LMDB transaction (see CaseIndex.write)."""

    def __init__(self, txn: Any, cases: Any, meta: Any) -> None:
        self._txn, self._cases, self._meta = txn, cases, meta

    def put(self, record: dict[str, Any]) -> None:
        case_id = check_case_id(record["id"])
        self._txn.put(case_id.encode(), encode(record), db=self._cases)

    def delete(self, case_id: str) -> None:
        self._txn.delete(case_id.encode(), db=self._cases)

    def get(self, case_id: str) -> dict[str, Any] | None:
        raw = self._txn.get(case_id.encode(), db=self._cases)
        return None if raw is None else decode(raw)

    def set_meta(self, key: str, value: Any) -> None:
        self._txn.put(key.encode(), encode(value), db=self._meta)

    def get_meta(self, key: str, default: Any = None) -> Any:
        raw = self._txn.get(key.encode(), db=self._meta)
        return default if raw is None else decode(raw)


class CaseIndex:
    """Open `WORK/index.lmdb` for reading (default) or writing (`writable=True` creates it)."""

    def __init__(self, work: str | Path, *, writable: bool = False) -> None:
        import lmdb

        self.path = Path(work) / INDEX_DIRNAME
        if not writable and not (self.path / "data.mdb").is_file():
            raise CaseIndexError(f"no case index at {self.path} (run `segpipe prepare` first)")
        if writable:
            self.path.mkdir(parents=True, exist_ok=True)
        options = {"map_size": _INITIAL_MAP_SIZE, "max_dbs": 4, "subdir": True, "readonly": not writable,
                   "create": writable, "readahead": False, "metasync": True, "sync": True}
        try:
            try:
                self._env = lmdb.open(str(self.path), lock=True, **options)
            except lmdb.Error:
                if writable:
                    raise
                # a reader without write access to the lock file (read-only mount, other uid)
                self._env = lmdb.open(str(self.path), lock=False, **options)
        except lmdb.Error as exc:
            raise CaseIndexError(f"cannot open case index {self.path}: {exc}") from None
        self.writable = writable
        self._cases = self._env.open_db(b"cases", create=writable)
        self._meta = self._env.open_db(b"meta", create=writable)
        schema = self.get_meta("schema")
        if schema is None and writable:
            with self.write() as txn:
                txn.set_meta("schema", SCHEMA_VERSION)
        elif schema is not None and schema != SCHEMA_VERSION:
            raise CaseIndexError(f"case index {self.path} has schema {schema}, this segpipe reads {SCHEMA_VERSION}")

    # context management ----------------------------------------------------------------
    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> CaseIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # writes ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[Transaction]:
        """One atomic write transaction; if the map is full it grows and the writes are replayed."""
        import lmdb

        if not self.writable:
            raise CaseIndexError(f"case index {self.path} is open read-only")
        ops: list[tuple[str, tuple[Any, ...]]] = []
        try:
            with self._env.begin(write=True) as txn:
                yield _Recorder(Transaction(txn, self._cases, self._meta), ops)  # type: ignore[misc]
            return
        except lmdb.MapFullError:
            pass
        for _ in range(16):
            self._env.set_mapsize(self._env.info()["map_size"] * 2)
            try:
                with self._env.begin(write=True) as txn:
                    t = Transaction(txn, self._cases, self._meta)
                    for name, args in ops:
                        getattr(t, name)(*args)
                return
            except lmdb.MapFullError:
                continue
        raise CaseIndexError(f"case index {self.path}: map full even after growing")

    def put(self, record: dict[str, Any]) -> None:
        with self.write() as txn:
            txn.put(record)

    def delete(self, case_ids: Iterable[str]) -> None:
        with self.write() as txn:
            for case_id in case_ids:
                txn.delete(case_id)

    def set_meta(self, key: str, value: Any) -> None:
        with self.write() as txn:
            txn.set_meta(key, value)

    # reads -------------------------------------------------------------------------------
    def get(self, case_id: str) -> dict[str, Any] | None:
        with self._env.begin() as txn:
            raw = txn.get(case_id.encode(), db=self._cases)
        return None if raw is None else self._decode(case_id, raw)

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._env.begin() as txn:
            raw = txn.get(key.encode(), db=self._meta)
        return default if raw is None else self._decode(f"meta:{key}", raw)

    def ids(self) -> list[str]:
        with self._env.begin() as txn:
            return [k.decode() for k in txn.cursor(db=self._cases).iternext(keys=True, values=False)]

    def records(self) -> dict[str, dict[str, Any]]:
        """All records (a few KB each; 2000 cases fit comfortably in memory)."""
        with self._env.begin() as txn:
            return {k.decode(): self._decode(k.decode(), v) for k, v in txn.cursor(db=self._cases)}

    def meta(self) -> dict[str, Any]:
        with self._env.begin() as txn:
            return {k.decode(): self._decode(f"meta:{k.decode()}", v) for k, v in txn.cursor(db=self._meta)}

    def raw_items(self) -> Iterator[tuple[str, bytes, bytes]]:
        """(database, key, value) for every entry, undecoded (for audits such as the no-pickle test)."""
        with self._env.begin() as txn:
            for name, db in (("cases", self._cases), ("meta", self._meta)):
                for k, v in txn.cursor(db=db):
                    yield name, bytes(k), bytes(v)

    def __len__(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._cases)["entries"])

    def _decode(self, what: str, raw: bytes) -> Any:
        try:
            return decode(raw)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise CaseIndexError(f"case index {self.path}: value of {what} is not msgpack ({exc})") from None


class _Recorder:
    """Forwards Transaction calls and remembers the writes so a MapFull retry can replay them."""

    def __init__(self, target: Transaction, ops: list[tuple[str, tuple[Any, ...]]]) -> None:
        self.target = target
        self.ops = ops

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)
        if name.startswith("get"):
            return method

        def call(*args: Any) -> Any:
            self.ops.append((name, args))
            return method(*args)

        return call
