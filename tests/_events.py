"""The tests' one event-file helper, on top of `keras_bn.events` (streaming, every record's CRCs
checked), plus `tensorboard_values`: the same run through TensorBoard's own loader, as an
independent check that TensorBoard reads what keras-bn wrote."""

from __future__ import annotations

import collections
import os

from keras_bn import events

__all__ = ["event_files", "plugin_content", "run_values", "scalar_series", "strict_steps", "tag_step_counts",
           "tensorboard_values", "write_scalar_events"]

event_files = events.event_files


def _events(run_dir):
    """Every Event of `run_dir`; a corrupt or undecodable record fails the test (a cut tail does not).
    Figures still being drawn in the background after ``fit`` returned are waited for first."""
    events.finish_writes(run_dir)
    for path in event_files(run_dir):
        problems = []
        yield from (event for _, event in events.iter_events(path, problems))
        bad = [str(p) for p in problems if p.kind != "truncated"]
        assert not bad, bad


def _cut_tail(path) -> int:
    """Bytes after the last complete record of `path` (0 for a cleanly closed file)."""
    problems = []
    events.finish_writes(os.path.dirname(path))
    for _ in events.iter_records(path, problems):
        pass
    truncated = [p for p in problems if p.kind == "truncated"]
    return os.path.getsize(path) - truncated[0].offset if truncated else 0


def strict_steps(run_dir) -> tuple[dict, int]:
    """``({tag: [step, ...]}, tail bytes)``: every value's step (a bad CRC fails the test) and the
    bytes after the last complete record of every file (a record cut short by a kill)."""
    steps = collections.defaultdict(list)
    for event in _events(run_dir):
        for value in event.summary.value:
            steps[value.tag].append(event.step)
    return dict(steps), sum(_cut_tail(path) for path in event_files(run_dir))


def tag_step_counts(run_dir) -> dict:
    """``{(tag, step): how many times it was written}`` over every event file of `run_dir`."""
    counts = collections.Counter()
    for event in _events(run_dir):
        for value in event.summary.value:
            counts[(value.tag, event.step)] += 1
    return dict(counts)


def scalar_series(run_dir, tag) -> dict:
    """``{step: value}`` of scalar `tag` in `run_dir`."""
    series = events.read_run_details(run_dir).scalars.get(tag)
    return dict(series.pairs()) if series is not None else {}


def run_values(run_dir) -> tuple[dict, dict]:
    """``({tag: [(step, ndarray), ...]}, {tag: plugin name})`` of every value in `run_dir` (scalars,
    histograms, images, text, layouts: any tensor), read with keras-bn's reader (a bad CRC fails)."""
    from tensorboard.util import tensor_util

    values, plugins = collections.defaultdict(list), {}
    for event in _events(run_dir):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name:
                plugins[value.tag] = value.metadata.plugin_data.plugin_name
            values[value.tag].append((event.step, tensor_util.make_ndarray(value.tensor)))
    return dict(values), plugins


def plugin_content(run_dir, plugin: str) -> dict:
    """``{tag: plugin_data.content}`` of the values of `run_dir` that `plugin` (e.g. "hparams") owns,
    as TensorBoard's ``EventAccumulator.PluginTagToContent`` gives them (the last one per tag)."""
    content = {}
    for event in _events(run_dir):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == plugin:
                content[value.tag] = value.metadata.plugin_data.content
    return content


def tensorboard_values(run_dir) -> dict:
    """``{tag: [(step, ndarray), ...]}`` read with TensorBoard's EventFileLoader (stops at a cut tail)."""
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util

    values = collections.defaultdict(list)
    events.finish_writes(run_dir)
    for path in event_files(run_dir):
        for event in event_file_loader.EventFileLoader(path).Load():
            for value in event.summary.value:
                values[value.tag].append((event.step, tensor_util.make_ndarray(value.tensor)))
    return dict(values)


def write_scalar_events(folder, series: dict) -> str:
    """Write ``{tag: [(step, value), ...]}`` as one event per value (in that order) to a new event
    file in `folder` with `keras_bn.events.EventFileWriter`; returns its path."""
    writer = events.EventFileWriter(folder)
    for tag, pairs in series.items():
        for step, value in pairs:
            writer.add_scalars(step, {tag: value})
    writer.close()
    return writer.path


def texts(run_dir, tag) -> list[tuple[int, str]]:
    """``[(step, text), ...]`` of text summary `tag`, the last one per step (as TensorBoard's
    Text dashboard shows them: a later text at the same step replaces the earlier)."""
    by_step = {}
    for step, value in run_values(run_dir)[0].get(tag, []):
        by_step[step] = value.item().decode()
    return sorted(by_step.items())
