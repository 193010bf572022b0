"""Read scalar summaries back from a TensorBoard run folder (tests of tf.distribute and mixed precision)."""

import collections
import glob
import os

import numpy as np


def _events(run_dir):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        yield from EventFileLoader(path).Load()


def _value(value):
    from tensorboard.util import tensor_util

    if value.HasField("tensor"):
        return float(np.asarray(tensor_util.make_ndarray(value.tensor)).reshape(-1)[0])
    return float(value.simple_value)


def tag_step_counts(run_dir) -> dict:
    """``{(tag, step): how many times it was written}`` over every event file of `run_dir`."""
    counts = collections.Counter()
    for event in _events(run_dir):
        for value in event.summary.value:
            counts[(value.tag, event.step)] += 1
    return dict(counts)


def scalar_series(run_dir, tag) -> dict:
    """``{step: value}`` of scalar `tag` in `run_dir`."""
    series = {}
    for event in _events(run_dir):
        for value in event.summary.value:
            if value.tag == tag:
                series[event.step] = _value(value)
    return series
