"""Read TensorBoard event files back strictly (every record's CRCs) and with TensorBoard's loader."""

from __future__ import annotations

import glob
import os
import struct
from collections import defaultdict

from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.util import tensor_util


def event_files(run_dir) -> list[str]:
    return sorted(glob.glob(os.path.join(str(run_dir), "events.out.tfevents.*")))


def strict_records(path) -> tuple[list[bytes], int]:
    """``(records, tail)``: every complete record (length and data CRCs checked: a bad CRC
    raises AssertionError) and the number of bytes after the last complete one (a record cut
    short by a kill; 0 for a cleanly closed file)."""
    data = open(path, "rb").read()
    records, offset = [], 0
    while offset + 12 <= len(data):
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
        assert masked_crc32c(header) == length_crc, f"{path}: bad length CRC at byte {offset}"
        end = offset + 12 + length + 4
        if end > len(data):
            break  # truncated tail
        payload = data[offset + 12:offset + 12 + length]
        (data_crc,) = struct.unpack("<I", data[end - 4:end])
        assert masked_crc32c(payload) == data_crc, f"{path}: bad data CRC at byte {offset}"
        records.append(payload)
        offset = end
    return records, len(data) - offset


def strict_steps(run_dir) -> tuple[dict, int]:
    """``({tag: [step, ...]}, total tail bytes)`` from `strict_records` of every event file."""
    steps, tail = defaultdict(list), 0
    for path in event_files(run_dir):
        records, cut = strict_records(path)
        tail += cut
        for record in records:
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                steps[value.tag].append(event.step)
    return dict(steps), tail


def loader_values(run_dir) -> dict:
    """``{tag: [(step, value), ...]}`` with TensorBoard's EventFileLoader (stops at a cut tail)."""
    values = defaultdict(list)
    for path in event_files(run_dir):
        for event in event_file_loader.EventFileLoader(path).Load():
            for value in event.summary.value:
                values[value.tag].append((event.step, tensor_util.make_ndarray(value.tensor)))
    return dict(values)
