"""Framing cost of keras-bn's event writer against ``tf.io.TFRecordWriter`` (same records, same run).

Writes the records of a diagnostics-like run (events of 20 scalars, a flush every 100 events)
with `keras_bn.events.EventFileWriter` and with TensorFlow's TFRecordWriter, alternating rounds,
and prints the median time per record of each and their ratio (keras-bn / TensorFlow).

Usage::

    python benchmarks/bench_event_writer.py [--events 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def payloads(count: int) -> list[bytes]:
    from keras_bn import _keras_internals as internals

    event_class, summary_class = internals.tensorboard_event_class(), internals.tensorboard_summary_class()
    records = []
    for step in range(count):
        summary = summary_class()
        for k in range(20):
            summary.value.add(tag=f"grad_norm/block{k}_dense", tensor=internals.tensorboard_tensor_proto(np.float32(step + k)))
        records.append(event_class(step=step, wall_time=time.time(), summary=summary).SerializeToString())
    return records


def keras_bn_round(folder: str, records: list[bytes]) -> float:
    from keras_bn.events import EventFileWriter

    start = time.perf_counter()
    writer = EventFileWriter(folder)
    for i, record in enumerate(records):
        writer.add_record(record)
        if i % 100 == 99:
            writer.flush()
    writer.close()
    return time.perf_counter() - start


def tensorflow_round(folder: str, records: list[bytes]) -> float:
    import tensorflow as tf

    start = time.perf_counter()
    tf.io.gfile.makedirs(folder)
    writer = tf.io.TFRecordWriter(os.path.join(folder, "events.out.tfevents.tf"))
    for i, record in enumerate(records):
        writer.write(record)
        if i % 100 == 99:
            writer.flush()
    writer.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    records = payloads(args.events)
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.rounds):
            ours.append(keras_bn_round(os.path.join(root, f"kbn{r}"), records))
            theirs.append(tensorflow_round(os.path.join(root, f"tf{r}"), records))
    ours_us = statistics.median(ours) / len(records) * 1e6
    theirs_us = statistics.median(theirs) / len(records) * 1e6
    size = len(records[0])
    print(f"{len(records)} records of ~{size} bytes, {args.rounds} alternating rounds (median)")
    print(f"keras_bn.events.EventFileWriter : {ours_us:6.2f} us/record")
    print(f"tf.io.TFRecordWriter            : {theirs_us:6.2f} us/record")
    print(f"ratio keras-bn / TensorFlow     : {ours_us / theirs_us:.2f}x")


if __name__ == "__main__":
    main()
