"""TensorBoard event files without TensorFlow: a streaming, checking reader and a whole-record writer.

An event file is a sequence of TFRecords (``uint64 length``, ``uint32 masked CRC32C of the
length``, ``data``, ``uint32 masked CRC32C of the data``), each record one serialized
TensorBoard ``Event`` proto. `iter_records` streams a file with bounded memory (one record at a
time), checks both checksums of every record and reports what it could not read as a
`RecordProblem` with the file and byte offset: TensorBoard's own loader stops silently at the
first bad record, so a corrupt or cut file would look like a short run. `EventFileWriter` writes
the same framing, only ever whole records, and creates its file at the first successful flush.

`read_run_details(log_dir)` reads every scalar of a run into compact arrays and says what it
found (`RunData.kind`, `RunData.problems`: corrupt or truncated records, two runs interleaved
in one folder); `read_run(log_dir)` is the plain ``{tag: [(step, value), ...]}`` form.

Usage::

    run = keras_bn.events.read_run_details("logs/run1")
    print(run.kind, [str(p) for p in run.problems])
    steps, values = run.scalars["grad_global/norm"]
"""

from __future__ import annotations

import glob
import itertools
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import google_crc32c
import numpy as np

from keras_bn import _keras_internals as internals

__all__ = [
    "EventFileWriter",
    "KIND_DIAGNOSTICS",
    "KIND_EMPTY",
    "KIND_KERAS",
    "KIND_OTHER",
    "RecordProblem",
    "RunData",
    "Series",
    "encode_record",
    "event_files",
    "iter_events",
    "iter_records",
    "masked_crc32c",
    "read_run",
    "read_run_details",
    "run_event_folder",
]

KIND_DIAGNOSTICS = "keras-bn diagnostics run"
KIND_KERAS = "plain Keras TensorBoard run"
KIND_OTHER = "TensorBoard run not written by keras-bn or Keras"
KIND_EMPTY = "empty"
# Tags only keras-bn's diagnostics write (`keras.callbacks.TensorBoard` writes epoch_*, batch_*,
# evaluation_* and weight histograms).
DIAGNOSTIC_PREFIXES = (
    "grad_norm/", "grad_norm_preclip/", "grad_global/", "update_ratio/", "dead_fraction/", "saturation/",
    "activation_std/", "activation_mean/", "activation_hist/", "zero_fraction/", "nonfinite/", "preact/",
)
KERAS_PREFIXES = ("epoch_", "batch_", "evaluation_")

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


def iter_records(path, problems: list | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, data)`` for every record of `path` whose checksums hold, one at a time.

    A record that fails is not yielded: a `RecordProblem` is appended to `problems` and reading
    goes on at the next record whose checksums hold (a bad length checksum: found by scanning
    forward), so one flipped bit costs one record, not the rest of the file. The file is read up
    to its size when opened (a file being written may end in a partial record: "truncated").

    Example::

        problems = []
        for offset, data in keras_bn.events.iter_records(path, problems): ...
    """
    path = os.fspath(path)
    problems = [] if problems is None else problems
    with open(path, "rb", buffering=1 << 20) as file:
        size = os.fstat(file.fileno()).st_size
        offset = 0
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


def iter_events(path, problems: list | None = None) -> Iterator[tuple[int, object]]:
    """Yield ``(offset, Event)`` for every readable record of `path` (see `iter_records`)."""
    event_class = internals.tensorboard_event_class()
    problems = [] if problems is None else problems
    for offset, data in iter_records(path, problems):
        try:
            event = event_class.FromString(data)
        except Exception as error:  # noqa: BLE001  protobuf's DecodeError and friends
            problems.append(RecordProblem(os.fspath(path), offset, "undecodable",
                                          f"a record of {len(data)} bytes is not an Event proto ({error})"))
            continue
        yield offset, event


def run_event_folder(log_dir) -> str:
    """``<log_dir>/train`` when it exists (the layout `diagnostics` and Keras write), else `log_dir`."""
    log_dir = os.fspath(log_dir)
    train = os.path.join(log_dir, "train")
    return train if os.path.isdir(train) else log_dir


def event_files(folder) -> list[str]:
    """The event files of `folder`, in TensorBoard's order (by name: creation time first)."""
    return sorted(glob.glob(os.path.join(glob.escape(os.fspath(folder)), "events.out.tfevents.*")))


class Series(NamedTuple):
    """One scalar tag: ``steps`` (int64) and ``values`` (float64), sorted by step."""

    steps: np.ndarray
    values: np.ndarray

    def pairs(self) -> list[tuple[int, float]]:
        return list(zip(self.steps.tolist(), self.values.tolist()))


@dataclass
class RunData:
    """Everything `read_run_details` found in one run folder."""

    folder: str
    files: list[str]
    kind: str
    scalars: dict[str, Series] = field(default_factory=dict)
    other_tags: set[str] = field(default_factory=set)
    problems: list[RecordProblem] = field(default_factory=list)


# DataType enum -> (repeated field, NumPy dtype of tensor_content); DT_HALF/BFLOAT16 keep bits in int_val.
_NUMERIC = {1: ("float_val", "<f4"), 2: ("double_val", "<f8"), 3: ("int_val", "<i4"), 4: ("int_val", "u1"),
            5: ("int_val", "<i2"), 6: ("int_val", "i1"), 9: ("int64_val", "<i8"), 17: ("int_val", "<u2"),
            19: ("half_val", "<f2"), 22: ("uint32_val", "<u4"), 23: ("uint64_val", "<u8")}


def _scalar(value) -> float | None:
    """The number a ``Summary.Value`` holds, or None when it is not one number."""
    which = value.WhichOneof("value")
    if which == "simple_value":
        return float(value.simple_value)
    if which != "tensor":
        return None
    tensor = value.tensor
    if any(dim.size != 1 for dim in tensor.tensor_shape.dim):
        return None
    spec = _NUMERIC.get(tensor.dtype)
    if spec is None:
        return None
    if tensor.tensor_content:
        return float(np.frombuffer(tensor.tensor_content, dtype=spec[1])[0])
    values = getattr(tensor, spec[0])
    if not len(values):
        return None
    if tensor.dtype == 19:  # float16 bits in an int field
        return float(np.array(values[0], dtype=np.uint16).view(np.float16))
    return float(values[0])


def read_run_details(log_dir) -> RunData:
    """Read every scalar of one run (``<log_dir>/train`` or `log_dir` itself), with what went wrong.

    Streams each event file (memory: 16 bytes per scalar plus one record), so a long run reads in
    bounded memory. Raises FileNotFoundError when the folder holds no event file.

    Example::

        run = keras_bn.events.read_run_details("logs/run1")
        if run.kind != keras_bn.events.KIND_DIAGNOSTICS: print(run.kind)
    """
    from array import array

    folder = run_event_folder(log_dir)
    files = event_files(folder)
    if not files:
        raise FileNotFoundError(
            f"No TensorBoard event files in {folder}; pass the folder that `diagnostics(log_dir)` "
            f"wrote (it holds train/ and validation/). Received: log_dir={os.fspath(log_dir)!r}"
        )
    steps: dict[str, array] = {}
    values: dict[str, array] = {}
    appenders: dict[str, tuple] = {}
    other: set[str] = set()
    problems: list[RecordProblem] = []
    for path in files:
        for _, event in iter_events(path, problems):
            if not event.HasField("summary"):
                continue
            step = event.step
            for value in event.summary.value:
                tensor = value.tensor  # the fast path: a float32 scalar, as keras-bn and Keras write it
                if tensor.dtype == 1 and len(tensor.float_val) == 1 and not tensor.tensor_shape.dim:
                    number = tensor.float_val[0]
                else:
                    number = _scalar(value)
                    if number is None:
                        other.add(value.tag)
                        continue
                append = appenders.get(value.tag)
                if append is None:
                    tag = value.tag
                    steps[tag], values[tag] = array("q"), array("d")
                    append = appenders[tag] = (steps[tag].append, values[tag].append)
                append[0](step)
                append[1](number)
    scalars = {}
    for tag in list(steps):
        tag_steps = np.frombuffer(steps.pop(tag), dtype=np.int64)
        tag_values = np.frombuffer(values.pop(tag), dtype=np.float64)
        if tag_steps.size > 1 and np.any(tag_steps[1:] < tag_steps[:-1]):
            order = np.argsort(tag_steps, kind="stable")
            tag_steps, tag_values = tag_steps[order], tag_values[order]
        scalars[tag] = Series(tag_steps, tag_values)
    problems += _interleaving(folder, files, scalars)
    return RunData(folder, files, _kind(scalars, other), scalars, other - set(scalars), problems)


def _kind(scalars: dict, other: set) -> str:
    tags = set(scalars) | other
    if any(tag.startswith(DIAGNOSTIC_PREFIXES) for tag in tags):
        return KIND_DIAGNOSTICS
    if any(tag.startswith(KERAS_PREFIXES) for tag in tags):
        return KIND_KERAS
    return KIND_OTHER if tags else KIND_EMPTY


def _interleaving(folder: str, files: list[str], scalars: dict[str, Series]) -> list[RecordProblem]:
    """One "interleaved" problem when some tag has a step written more than once."""
    repeated = {}
    for tag, series in scalars.items():
        duplicate = series.steps[1:] == series.steps[:-1]
        if duplicate.any():
            repeated[tag] = (int(duplicate.sum()), int(series.steps[1:][duplicate][0]))
    if not repeated:
        return []
    tag, (count, step) = max(repeated.items(), key=lambda item: item[1][0])
    many = f"{len(files)} event files" if len(files) > 1 else "one event file"
    return [RecordProblem(folder, -1, "interleaved", (
        f"two runs interleaved: {len(repeated)} tag(s) have steps written more than once "
        f"(e.g. {tag!r}: {count} repeated step(s), the first at step {step}; {many}). A re-run or a "
        "second process wrote into the same log_dir; give each run its own folder "
        "(keras_bn.callbacks.unique_run_dir)"
    ))]


def read_run(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run as ``{tag: [(step, value), ...]}``, sorted by step (see
    `read_run_details` for what could not be read)."""
    return {tag: series.pairs() for tag, series in read_run_details(log_dir).scalars.items()}


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
        writer.add_scalars(1, {"loss": 0.7})  # or writer.add(event), a TensorBoard Event proto
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
        summary = internals.tensorboard_summary_class()()
        for tag, number in values.items():
            value = summary.value.add(tag=tag, tensor=internals.tensorboard_tensor_proto(np.float32(number)))
            if tag not in self._described:
                self._described.add(tag)
                value.metadata.CopyFrom(internals.tensorboard_plugin_metadata("scalar"))
        self.add(internals.tensorboard_event_class()(wall_time=time.time(), step=int(step), summary=summary))

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
