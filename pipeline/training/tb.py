"""Minimal TensorBoard scalar writer (no tensorflow/tensorboard dependency).

Writes the standard `events.out.tfevents.*` TFRecord stream: each record is
len (u64) · masked-crc32c(len) · Event protobuf · masked-crc32c(data). Only the fields scalars
need are encoded: Event{wall_time=1, step=2, file_version=3, summary=5}, Summary{value=1},
Value{tag=1, simple_value=2}.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        msg += _field_bytes(3, file_version.encode())
    if scalars:
        values = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", float(v)))
            for tag, v in scalars.items()
        )
        msg += _field_bytes(5, values)
    return msg


def frame(record: bytes) -> bytes:
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", masked_crc(header)) + record + struct.pack("<I", masked_crc(record))


class ScalarWriter:
    """Append-only event file; each `add` is flushed so a killed run keeps its curves."""

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        Path(logdir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = Path(logdir) / name
        self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the run
        self._write(encode_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, record: bytes) -> None:
        self._fh.write(frame(record))
        self._fh.flush()

    def add(self, step: int, scalars: dict[str, float]) -> None:
        self._write(encode_event(time.time(), step, scalars=scalars))

    def close(self) -> None:
        self._fh.close()


def read_scalars(path: str | os.PathLike[str]) -> list[tuple[int, str, float]]:
    """Decode (step, tag, value) triples, checking every CRC; used by tests."""
    data = Path(path).read_bytes()
    out: list[tuple[int, str, float]] = []
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[pos + 8 : pos + 12])[0] != masked_crc(header):
            raise ValueError(f"{path}: bad length crc at byte {pos}")
        rec = data[pos + 12 : pos + 12 + length]
        if struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] != masked_crc(rec):
            raise ValueError(f"{path}: bad data crc at byte {pos}")
        pos += 16 + length
        out.extend(_decode_event(rec))
    return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _read_varint(buf, i)
        elif wt == 1:
            v, i = buf[i : i + 8], i + 8
        elif wt == 5:
            v, i = buf[i : i + 4], i + 4
        elif wt == 2:
            n, i = _read_varint(buf, i)
            v, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, v


def _decode_event(rec: bytes) -> list[tuple[int, str, float]]:
    step, out = 0, []
    summaries = []
    for num, v in _fields(rec):
        if num == 2:
            step = v
        elif num == 5:
            summaries.append(v)
    for s in summaries:
        for num, val in _fields(s):
            if num != 1:
                continue
            tag, value = "", 0.0
            for n2, v2 in _fields(val):
                if n2 == 1:
                    tag = v2.decode()
                elif n2 == 2:
                    value = struct.unpack("<f", v2)[0]
            out.append((step, tag, value))
    return out
