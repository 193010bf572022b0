"""One run folder read back: every scalar in compact arrays, and what could not be read.

Usage::

    from keras_bn.events import read_run_details
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from keras_bn import _keras_internals as internals
from keras_bn.events.records import RecordProblem, finish_writes, iter_events, iter_records

__all__ = ["DIAGNOSTIC_PREFIXES", "KERAS_PREFIXES", "KIND_DIAGNOSTICS", "KIND_EMPTY", "KIND_KERAS", "KIND_OTHER",
           "RunData", "Series", "event_files", "last_step", "read_run", "read_run_details", "run_event_folder"]

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


# DataType enum -> (repeated field, NumPy dtype of tensor_content); DT_HALF keeps its bits in half_val.
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

    finish_writes(log_dir)
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


# path -> (bytes of whole records read so far, largest step among them): event files only grow.
_LAST_STEPS: dict[str, tuple[int, int | None]] = {}


def last_step(folder) -> int | None:
    """The largest step of a summary in the event files of `folder` (``epoch_*`` scalars, which
    Keras indexes by epoch, are left out), or None when there is none (or no folder).

    Cheap to call again: each file is read from where the last call stopped (a file that shrank
    is read again), and records are decoded for their step and tags only.

    Example::

        keras_bn.events.last_step("logs/run1/train")  # 16
    """
    event_class = internals.tensorboard_event_class()
    last = None
    for path in event_files(folder):
        read, file_last = _LAST_STEPS.get(path, (0, None))
        try:
            if os.path.getsize(path) < read:
                read, file_last = 0, None
            for offset, data in iter_records(path, [], start=read):
                read = offset + 16 + len(data)
                try:
                    event = event_class.FromString(data)
                except Exception:  # noqa: BLE001  an undecodable record holds no step
                    continue
                if (file_last is None or event.step > file_last) and any(
                        not value.tag.startswith("epoch_") for value in event.summary.value):
                    file_last = event.step
        except OSError:  # a file removed while reading: what was read counts
            pass
        _LAST_STEPS[path] = (read, file_last)
        if file_last is not None and (last is None or file_last > last):
            last = file_last
    return last
