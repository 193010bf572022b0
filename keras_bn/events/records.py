"""TFRecord framing of event files: the checked, streaming record reader and the whole-record writer.

Usage::

    from keras_bn.events import EventFileWriter, iter_records
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Iterator

import google_crc32c

from keras_bn import _keras_internals as internals

__all__ = ["EventFileWriter", "RecordProblem", "encode_record", "finish_writes", "iter_events", "iter_records",
           "masked_crc32c"]

_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_HEADER = struct.Struct("<QI")
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data) -> int:
    """The TFRecord checksum of `data`: CRC32C (C-backed, google-crc32c), rotated and offset."""
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    """`data` framed as one TFRecord (header, data and both checksums)."""
    length = _LENGTH.pack(len(data))
    return b"".join((length, _CRC.pack(masked_crc32c(length)), data, _CRC.pack(masked_crc32c(data))))


def _varint(number: int) -> bytes:
    """`number` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _scalar_value_head(tag: str) -> bytes:
    """Everything of one float32 scalar's ``Summary.Value`` (framed as a ``Summary`` field) but
    its 4 value bytes: the bytes `Event.SerializeToString` writes for ``value.add(tag=tag)``
    with ``tensor = {dtype: DT_FLOAT, tensor_shape: {}, float_val: [x]}`` and no metadata."""
    name = tag.encode("utf-8")
    value = b"\x0a" + _varint(len(name)) + name + b"\x42\x0a\x08\x01\x12\x00\x2a\x04"  # tag; tensor (x last)
    return b"\x0a" + _varint(len(value) + 4) + value


def _float32_bytes(number) -> bytes:
    try:
        return _FLOAT.pack(float(number))
    except OverflowError:  # beyond float32: +-inf, as numpy's cast makes it
        import numpy as np

        return np.float32(number).tobytes()


@dataclass(frozen=True)
class RecordProblem:
    """What could not be read, and where: ``kind`` is "corrupt", "truncated", "undecodable" or
    "interleaved"; ``offset`` is the byte offset in `path` (-1 where it concerns a whole run)."""

    path: str
    offset: int
    kind: str
    message: str

    def __str__(self) -> str:
        where = self.path if self.offset < 0 else f"{self.path}:{self.offset}"
        return f"{where}: {self.message}"


def _resync(file, start: int, size: int) -> int | None:
    """The offset of the next record at or after `start` whose two checksums hold, or None."""
    window = 1 << 16
    position = start
    while position + 16 <= size:
        file.seek(position)
        chunk = file.read(window + 11)
        for i in range(max(0, len(chunk) - 11)):
            length, length_crc = _HEADER.unpack_from(chunk, i)
            if position + i + 16 + length > size or masked_crc32c(chunk[i:i + 8]) != length_crc:
                continue
            file.seek(position + i + 12)
            body = file.read(length + 4)
            if masked_crc32c(body[:length]) == _CRC.unpack_from(body, length)[0]:
                return position + i
        position += window
    return None


def iter_records(path, problems: list | None = None, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, data)`` for every record of `path` whose checksums hold, one at a time.

    A record that fails is not yielded: a `RecordProblem` is appended to `problems` and reading
    goes on at the next record whose checksums hold (a bad length checksum: found by scanning
    forward), so one flipped bit costs one record, not the rest of the file. The file is read up
    to its size when opened (a file being written may end in a partial record: "truncated").
    `start` is the offset of a record to begin at (where an earlier read stopped: event files
    only grow), so a file being written can be followed without reading it again.

    Example::

        problems = []
        for offset, data in keras_bn.events.iter_records(path, problems): ...
    """
    path = os.fspath(path)
    problems = [] if problems is None else problems
    with open(path, "rb", buffering=1 << 20) as file:
        size = os.fstat(file.fileno()).st_size
        offset = start
        file.seek(offset)
        while offset < size:
            header = file.read(12)
            if len(header) < 12:
                problems.append(RecordProblem(path, offset, "truncated",
                                              f"the file ends inside a record header ({len(header)} of 12 bytes)"))
                return
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                found = _resync(file, offset + 1, size)
                end = size if found is None else found
                problems.append(RecordProblem(
                    path, offset, "corrupt",
                    f"bad length checksum: {end - offset} bytes skipped "
                    + ("to the end of the file" if found is None else f"to the next valid record at byte {found}"),
                ))
                if found is None:
                    return
                offset = found
                file.seek(offset)
                continue
            if offset + 16 + length > size:
                problems.append(RecordProblem(
                    path, offset, "truncated",
                    f"the file ends inside a record of {length} bytes ({size - offset - 12} of {length + 4} "
                    "bytes after the header): a run still writing, or one that was killed",
                ))
                return
            body = file.read(length + 4)
            data = body[:length]
            if masked_crc32c(data) != _CRC.unpack_from(body, length)[0]:
                problems.append(RecordProblem(path, offset, "corrupt",
                                              f"bad data checksum: a record of {length} bytes skipped"))
            else:
                yield offset, data
            offset += 16 + length


def iter_events(path, problems: list | None = None, start: int = 0) -> Iterator[tuple[int, object]]:
    """Yield ``(offset, Event)`` for every readable record of `path` (see `iter_records`)."""
    event_class = internals.tensorboard_event_class()
    problems = [] if problems is None else problems
    for offset, data in iter_records(path, problems, start):
        try:
            event = event_class.FromString(data)
        except Exception as error:  # noqa: BLE001  protobuf's DecodeError and friends
            problems.append(RecordProblem(os.fspath(path), offset, "undecodable",
                                          f"a record of {len(data)} bytes is not an Event proto ({error})"))
            continue
        yield offset, event


# Functions ``finish(path)`` that wait until this process's writes still under way in the
# background below `path` (None: anywhere) are on disk; `keras_bn.callbacks` adds one for the
# figures its writers draw after ``fit`` has returned.
PENDING_WRITES: list = []


def finish_writes(path=None) -> None:
    """Wait until every event this process is still writing in the background under `path`
    (None: anywhere) is on disk, e.g. the train-end figure of the diagnostics, drawn after
    ``fit`` returned. keras-bn's readers call it; call it before reading a run with another tool.

    Example: ``model.fit(...); keras_bn.events.finish_writes("logs/run1")``
    """
    for finish in list(PENDING_WRITES):
        finish(None if path is None else os.path.abspath(os.fspath(path)))


def _open_for_append(path: str):
    """An unbuffered binary file for appending (one place, so that tests can simulate a full disk)."""
    return open(path, "ab", buffering=0)


class EventFileWriter:
    """Append TensorBoard events to a new event file in `run_dir`, whole records only.

    Events are framed in memory by `add`; `flush` writes them with one unbuffered write and,
    when the disk fails part way, cuts the file back to its last whole record and keeps the
    unwritten records for the next `flush` (at most `max_pending_bytes`; later ones are counted
    in `dropped`). The folder and the file are created at the first flush, so a disk that is
    full from the start leaves no empty files. `flush` and `close` raise OSError; callers that
    must not fail (the callbacks' `RunWriters`) catch it.

    Example::

        writer = EventFileWriter("logs/run1/train")
        writer.add_scalars(1, {"loss": 0.7})  # or add_text, add_summary (a Summary proto), add (an Event)
        writer.close()
    """

    _count = itertools.count()

    def __init__(self, run_dir, *, max_pending_bytes: int = 64 << 20):
        self.run_dir = os.fspath(run_dir)
        name = (f"events.out.tfevents.{time.time():010.0f}.{socket.gethostname()}.{os.getpid()}."
                f"{next(self._count)}.v2")
        self.path = os.path.join(self.run_dir, name)
        self.max_pending_bytes = int(max_pending_bytes)
        self.dropped = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._file = None
        self._size = 0  # bytes of whole records on disk
        self._described: set[str] = set()
        self._scalar_heads: dict[str, bytes] = {}  # tag -> `_scalar_value_head(tag)`
        event_class = internals.tensorboard_event_class()
        self.add(event_class(wall_time=time.time(), file_version="brain.Event:2"))

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def add(self, event) -> None:
        """Frame `event` (a TensorBoard ``Event``) for the next flush."""
        self.add_record(event.SerializeToString())

    def add_scalars(self, step: int, values: dict) -> None:
        """Add one event of ``{tag: number}`` scalars at `step` (float32, as ``tf.summary.scalar``
        writes them; the scalar plugin's metadata goes with each tag's first value)."""
        self.add_values(step, [(tag, "scalar", number) for tag, number in values.items()])

    def add_values(self, step: int, values: list) -> None:
        """Add ``[(tag, kind, payload), ...]`` as one event at `step`: `kind` a summary plugin
        (``"scalar"``: `payload` a number, float32; ``"histogram"``, ``"image"``: a ready
        ``TensorProto``), the plugin's metadata with each tag's first value. Built in place;
        an event of scalars whose tags were described already is serialized directly (the
        bytes TensorBoard's ``Event`` proto would make, at a seventh of the cost: a write of the
        callbacks' dozen scalars every logging step)."""
        step = int(step)
        if step >= 0:
            data = self._scalars_event(step, values)
            if data is not None:
                self.add_record(data)
                return
        event = internals.tensorboard_event_class()(wall_time=time.time(), step=step)
        for tag, kind, payload in values:
            value = event.summary.value.add(tag=tag)
            if kind == "scalar":
                internals.tensorboard_float_tensor(payload, into=value.tensor)
            else:
                value.tensor.CopyFrom(payload)
            if tag not in self._described:
                self._described.add(tag)
                value.metadata.CopyFrom(internals.tensorboard_plugin_metadata(kind))
        self.add(event)

    def _scalars_event(self, step: int, values: list) -> bytes | None:
        """The serialized ``Event`` of `values` at `step` if they are all scalars of described
        tags (else None): ``wall_time`` (field 1), ``step`` (2), ``summary`` (5)."""
        heads, parts = self._scalar_heads, []
        for tag, kind, payload in values:
            if kind != "scalar" or tag not in self._described:
                return None
            head = heads.get(tag)
            if head is None:
                head = heads[tag] = _scalar_value_head(tag)
            parts.append(head)
            parts.append(_float32_bytes(payload))
        summary = b"".join(parts)
        step_field = b"\x10" + _varint(step) if step else b""  # proto3 leaves a 0 out
        return b"".join((b"\x09", _DOUBLE.pack(time.time()), step_field, b"\x2a", _varint(len(summary)), summary))

    def add_summary(self, step: int, summary) -> None:
        """Add a ready-made ``Summary`` proto (TensorBoard's, e.g. from
        ``tensorboard.plugins.hparams.api.hparams_pb``, or TensorFlow's class) as one event at `step`."""
        event = internals.tensorboard_event_class()(wall_time=time.time(), step=int(step))
        event.summary.ParseFromString(summary.SerializeToString())
        self.add(event)

    def add_text(self, step: int, tag: str, text: str) -> None:
        """Add one text summary (TensorBoard's Text dashboard renders it as Markdown) at `step`."""
        self.add_summary(step, internals.tensorboard_text_summary(tag, text))

    def add_record(self, data: bytes) -> None:
        record = encode_record(data)
        if self._pending_bytes + len(record) > self.max_pending_bytes:
            self.dropped += 1
            return
        self._pending.append(record)
        self._pending_bytes += len(record)

    def flush(self) -> None:
        """Write every pending record; on OSError the file holds whole records only."""
        if not self._pending:
            return
        if self._file is None:
            os.makedirs(self.run_dir, exist_ok=True)
            self._file = _open_for_append(self.path)
            self._size = os.fstat(self._file.fileno()).st_size
        data = b"".join(self._pending)
        written = 0
        try:
            while written < len(data):
                written += self._file.write(memoryview(data)[written:]) or 0
        except OSError:
            self._keep_whole_records(written)
            if self._size == 0:  # nothing of this run reached the disk: leave no empty file behind
                self._discard_file()
            raise
        self._size += written
        self._pending, self._pending_bytes = [], 0

    def _keep_whole_records(self, written: int) -> None:
        """After a write that failed part way: drop the records that made it, cut a partial one."""
        whole = 0
        while self._pending and whole + len(self._pending[0]) <= written:
            whole += len(self._pending[0])
            self._pending_bytes -= len(self._pending.pop(0))
        if whole != written:
            try:
                os.ftruncate(self._file.fileno(), self._size + whole)
            except OSError:  # the reader skips the partial record (and reports it) if this fails
                pass
        self._size += whole

    def _discard_file(self) -> None:
        try:
            self._file.close()
            os.unlink(self.path)
        except OSError:
            pass
        self._file = None

    def close(self) -> None:
        """Flush and close the file (the file stays closed even when the flush raises)."""
        try:
            self.flush()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None
