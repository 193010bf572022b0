"""keras_bn.events: the streaming record reader, the whole-record writer and read_run(_details),
checked against TensorBoard's own reader and checksum."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_bn import events
from keras_bn.events import runs
from keras_bn import _keras_internals as internals
from tests._events import write_scalar_events

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_masked_crc32c_matches_tensorboards_implementation():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 8, 100, 4097):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert events.masked_crc32c(data) == masked_crc32c(data)


def test_written_events_read_back_with_keras_bn_and_tensorboards_loader(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    series = {"grad_norm/dense": [(1, 0.5), (2, 0.25), (3, 0.125)], "batch_loss": [(1, 2.0), (3, 1.5)]}
    path = write_scalar_events(tmp_path / "train", series)
    run = events.read_run_details(tmp_path)
    assert run.problems == [] and run.kind == events.KIND_DIAGNOSTICS
    assert {tag: s.pairs() for tag, s in run.scalars.items()} == series
    loaded = [(e.step, v.tag, float(v.tensor.float_val[0])) for e in EventFileLoader(path).Load() for v in e.summary.value]
    assert sorted(loaded) == sorted((s, tag, v) for tag, pairs in series.items() for s, v in pairs)
    assert events.read_run(tmp_path) == series


def test_the_tests_reader_agrees_with_tensorboards_event_accumulator(tmp_path):
    """The one cross-check of tests/_events.py (keras-bn's reader) against TensorBoard's
    EventAccumulator: every tag, step, value and plugin of a run with scalars, histograms,
    images, the custom-scalars layout, text and HParams summaries."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    from keras_bn.callbacks import RunWriters
    from tests._events import plugin_content, run_values

    writers = RunWriters(str(tmp_path))
    writers.add_charts({"gradient norm per layer": r"grad_norm/.*"})
    for step in (1, 2, 3):
        with writers.writing("train", step) as write:
            write.scalar("grad_norm/dense", 0.5 * step)
            write.histogram_buckets("activation_hist/dense", [0.0, 1.0, 2.0], [3, step])
            write.image("figures/chart", np.full((4, 6, 4), 255, np.uint8))
    writers.close()
    hp = internals.tensorboard_hparams_api()
    lr = hp.HParam("learning_rate", hp.RealInterval(1e-4, 1.0))
    writer = events.EventFileWriter(tmp_path / "train")
    writer.add_text(2, "lr_find/suggestion", "0.01 (rule steepest)")
    writer.add_summary(0, hp.hparams_pb({lr: 0.01}, trial_id="coarse_00"))
    writer.close()

    ours, plugins = run_values(tmp_path / "train")
    acc = event_accumulator.EventAccumulator(str(tmp_path / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    theirs = {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
              for tag in acc.Tags()["tensors"]}
    assert set(ours) == set(theirs) | {"_hparams_/session_start_info"}  # the accumulator keeps HParams apart
    for tag, series in theirs.items():
        assert [s for s, _ in ours[tag]] == [s for s, _ in series], tag
        for (_, mine), (_, tb) in zip(ours[tag], series):
            np.testing.assert_array_equal(mine, tb)
    assert plugins == {tag: acc.SummaryMetadata(tag).plugin_data.plugin_name for tag in theirs} | {
        "_hparams_/session_start_info": "hparams"}
    assert plugin_content(tmp_path / "train", "hparams") == acc.PluginTagToContent("hparams")


def test_the_direct_float32_scalar_tensor_is_what_make_tensor_proto_makes():
    from tensorboard.util import tensor_util

    for value in (0.1, -3.0, 0.0, 1e-45, 3.4e38, float("nan"), float("inf"), -float("inf")):
        expected = tensor_util.make_tensor_proto(np.float32(value)).SerializeToString()
        assert internals.tensorboard_float_tensor(value).SerializeToString() == expected, value


def test_a_scalar_event_serialized_directly_is_the_event_tensorboards_protos_make(tmp_path):
    """`EventFileWriter.add_values` serializes events of already-described scalar tags itself:
    the bytes must be those of TensorBoard's ``Event`` proto with the same fields (tags of 1 and
    of 200 bytes, non-ASCII, steps around the varint's byte boundaries, float32 edge values)."""
    from tensorboard.compat.proto import event_pb2

    tags = ["loss", "grad_norm/d\u00e9nse_1", "t" * 200]
    numbers = [0.1, -3.0, 0.0, 1e-45, 3.4e38, float("nan"), float("inf"), -float("inf"), np.float64(2.5), 7]
    writer = events.EventFileWriter(tmp_path)
    writer.add_values(0, [(tag, "scalar", 1.0) for tag in tags])  # the first values carry the metadata
    steps = (0, 1, 127, 128, 16383, 16384, 2**40)
    for step in steps:
        writer.add_values(step, [(tags[i % 3], "scalar", number) for i, number in enumerate(numbers)])
    writer.close()
    records = [data for _, data in events.iter_records(writer.path)][2:]  # after the file version and the first event
    assert len(records) == len(steps)
    for step, data in zip(steps, records):
        event = event_pb2.Event.FromString(data)
        expected = event_pb2.Event(wall_time=event.wall_time, step=step)
        for i, number in enumerate(numbers):
            value = expected.summary.value.add(tag=tags[i % 3])
            internals.tensorboard_float_tensor(number, into=value.tensor)
        assert data == expected.SerializeToString(), step
    with pytest.warns(RuntimeWarning, match="overflow"):  # beyond float32: inf, as numpy's cast makes it
        writer = events.EventFileWriter(tmp_path / "big")
        writer.add_values(3, [("loss", "scalar", 1.0)])
        writer.add_values(4, [("loss", "scalar", 1e39), ("loss", "scalar", -1e39)])
        writer.close()
    last = [data for _, data in events.iter_records(writer.path)][2]
    assert [v.tensor.float_val[0] for v in event_pb2.Event.FromString(last).summary.value] == [
        float("inf"), -float("inf")]


def test_values_of_every_numeric_dtype_and_simple_value_are_read():
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.util import tensor_util

    for value in (np.float32(1.5), np.float64(-2.25), np.int32(7), np.int64(-9), np.float16(0.5), np.uint8(200)):
        proto = summary_pb2.Summary.Value(tag="x", tensor=tensor_util.make_tensor_proto(value))
        assert runs._scalar(proto) == float(value), value.dtype
    assert runs._scalar(summary_pb2.Summary.Value(tag="x", simple_value=3.5)) == 3.5
    vector = summary_pb2.Summary.Value(tag="x", tensor=tensor_util.make_tensor_proto(np.zeros(3, np.float32)))
    assert runs._scalar(vector) is None


def test_random_bytes_are_reported_with_file_and_offset(tmp_path):
    (tmp_path / "train").mkdir()
    path = tmp_path / "train" / "events.out.tfevents.1.host.1.0.v2"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    run = events.read_run_details(tmp_path)
    assert run.kind == events.KIND_EMPTY and run.scalars == {}
    assert len(run.problems) == 1 and run.problems[0].kind == "corrupt"
    assert str(run.problems[0]).startswith(f"{path}:0: bad length checksum: 5000 bytes skipped to the end")


def test_an_empty_file_is_an_empty_run_without_problems(tmp_path):
    (tmp_path / "events.out.tfevents.1.host.1.0.v2").write_bytes(b"")
    run = events.read_run_details(tmp_path)
    assert (run.kind, run.problems, run.scalars) == (events.KIND_EMPTY, [], {})
    with pytest.raises(FileNotFoundError, match="No TensorBoard event files"):
        events.read_run(tmp_path / "nothing_here")


def record_offsets(path):
    return [offset for offset, _ in events.iter_records(path)]


def test_a_truncated_last_record_is_reported_and_the_rest_read(tmp_path):
    series = {"grad_norm/a": [(s, float(s)) for s in range(1, 6)]}
    path = write_scalar_events(tmp_path, series)
    offsets = record_offsets(path)  # file_version, then one record per step
    size = os.path.getsize(path)
    with open(path, "r+b") as file:
        file.truncate(size - 5)
    run = events.read_run_details(tmp_path)
    assert run.scalars["grad_norm/a"].pairs() == series["grad_norm/a"][:-1]
    assert [(p.kind, p.offset) for p in run.problems] == [("truncated", offsets[-1])]
    assert "the file ends inside a record" in str(run.problems[0])


@pytest.mark.parametrize("where", ["data", "length"])
def test_a_corrupt_record_costs_that_record_only(tmp_path, where):
    series = {"grad_norm/a": [(s, float(s)) for s in range(1, 6)]}
    path = write_scalar_events(tmp_path, series)
    offsets = record_offsets(path)
    bad = offsets[3]  # the record of step 3
    with open(path, "r+b") as file:
        file.seek(bad + (20 if where == "data" else 2))
        byte = file.read(1)
        file.seek(-1, 1)
        file.write(bytes([byte[0] ^ 0x10]))
    run = events.read_run_details(tmp_path)
    assert [s for s, _ in run.scalars["grad_norm/a"].pairs()] == [1, 2, 4, 5]
    assert [(p.kind, p.offset) for p in run.problems] == [("corrupt", bad)]
    expected = "bad data checksum" if where == "data" else f"to the next valid record at byte {offsets[4]}"
    assert expected in str(run.problems[0])


def test_a_plain_keras_tensorboard_run_is_named_as_such(tmp_path):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).normal(size=(16, 3)).astype("float32"), np.arange(16) % 2
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0,
                        callbacks=[keras.callbacks.TensorBoard(str(tmp_path))])
    run = events.read_run_details(tmp_path)
    assert run.kind == events.KIND_KERAS and run.problems == []
    assert run.scalars["epoch_loss"].steps.tolist() == [0, 1, 2]
    np.testing.assert_allclose(run.scalars["epoch_loss"].values, history.history["loss"], rtol=1e-6)


def test_two_runs_written_into_one_folder_are_named_interleaved(tmp_path):
    series = {"grad_norm/a": [(1, 1.0), (2, 0.5)], "batch_loss": [(1, 2.0), (2, 1.0)]}
    write_scalar_events(tmp_path, series)
    write_scalar_events(tmp_path, series)  # a re-run into the same log_dir
    run = events.read_run_details(tmp_path)
    assert run.kind == events.KIND_DIAGNOSTICS
    assert [p.kind for p in run.problems] == ["interleaved"]
    assert "two runs interleaved: 2 tag(s) have steps written more than once" in str(run.problems[0])
    assert "2 event files" in str(run.problems[0])
    assert run.scalars["grad_norm/a"].steps.tolist() == [1, 1, 2, 2]  # sorted by step, both kept


def test_steps_written_out_of_order_come_back_sorted(tmp_path):
    write_scalar_events(tmp_path, {"grad_norm/a": [(3, 3.0), (1, 1.0), (2, 2.0)]})
    assert events.read_run(tmp_path) == {"grad_norm/a": [(1, 1.0), (2, 2.0), (3, 3.0)]}


def test_writer_creates_nothing_before_its_first_flush(tmp_path):
    writer = events.EventFileWriter(tmp_path / "run" / "train")
    assert not (tmp_path / "run").exists()
    writer.close()
    assert [os.path.basename(p) for p in events.event_files(tmp_path / "run" / "train")] == [os.path.basename(writer.path)]
    assert len(record_offsets(writer.path)) == 1  # just the file_version record


def test_writer_drops_records_beyond_its_pending_cap_and_counts_them(tmp_path):
    writer = events.EventFileWriter(tmp_path, max_pending_bytes=200)
    for _ in range(10):
        writer.add_record(b"x" * 50)  # 66 bytes framed
    assert writer.dropped == 8 and writer.pending_bytes <= 200
    writer.close()
    assert len(record_offsets(writer.path)) == 3  # file_version + 2


TF_BLOCKED = textwrap.dedent("""
    import sys
    sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError from here on
    import os
    os.environ["KERAS_BACKEND"] = "numpy"
    log_dir = sys.argv[1]
    from keras_bn.callbacks._writer import RunWriters
    from keras_bn import events
    writers = RunWriters(log_dir)
    writers.add_charts({"gradient norm per layer": r"grad_norm/.*"})
    for step in (1, 2, 3):
        with writers.writing("train", step) as write:
            write.scalar("grad_norm/dense", 0.5 * step)
            write.histogram_buckets("activation_hist/dense", [0.0, 1.0, 2.0], [3, 4])
    writers.close()
    run = events.read_run_details(log_dir)
    assert run.problems == [] and run.kind == events.KIND_DIAGNOSTICS, (run.problems, run.kind)
    assert run.scalars["grad_norm/dense"].pairs() == [(1, 0.5), (2, 1.0), (3, 1.5)]
    from tensorboard.backend.event_processing import event_accumulator
    # the text and HParams summaries of lr_find, LossGuard and search, through the same writer
    from keras_bn import _keras_internals as internals
    hp = internals.tensorboard_hparams_api()
    lr = hp.HParam("learning_rate", hp.RealInterval(1e-4, 1.0))
    other = events.EventFileWriter(os.path.join(log_dir, "tools"))
    other.add_summary(0, hp.hparams_config_pb(hparams=[lr], metrics=[hp.Metric("loss")]))
    other.add_summary(0, hp.hparams_pb({lr: 0.01}, trial_id="coarse_00"))
    other.add_text(4, "loss_guard/reason", "loss 9 > 3 x initial 2.3 at step 4")
    other.close()
    tools = event_accumulator.EventAccumulator(os.path.join(log_dir, "tools"), size_guidance={"tensors": 0})
    tools.Reload()
    assert tools.PluginTagToContent("hparams").keys() == {"_hparams_/experiment", "_hparams_/session_start_info"}
    (text,) = tools.Tensors("loss_guard/reason")
    assert (text.step, text.tensor_proto.string_val[0]) == (4, b"loss 9 > 3 x initial 2.3 at step 4")
    assert tools.SummaryMetadata("loss_guard/reason").plugin_data.plugin_name == "text"
    acc = event_accumulator.EventAccumulator(os.path.join(log_dir, "train"), size_guidance={"tensors": 0})
    acc.Reload()
    print(sorted(acc.Tags()["tensors"]))
    print([(e.step, float(e.tensor_proto.float_val[0])) for e in acc.Tensors("grad_norm/dense")])
    print("tensorflow imported:", sys.modules.get("tensorflow") is not None)
""")


def test_event_files_are_written_and_read_without_tensorflow(tmp_path):
    result = subprocess.run([sys.executable, "-c", TF_BLOCKED, str(tmp_path)], capture_output=True, text=True,
                            cwd=REPO, timeout=300, env={**os.environ, "KERAS_BACKEND": "numpy"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-3] == "['activation_hist/dense', 'custom_scalars__config__', 'grad_norm/dense']"
    assert lines[-2] == "[(1, 0.5), (2, 1.0), (3, 1.5)]"
    assert lines[-1] == "tensorflow imported: False"


def test_the_event_proto_names_the_reader_relies_on_exist():
    assert not [name for name in internals.missing_names() if "tensorboard" in name]


def test_the_docs_example_runs_and_prints_what_it_says(tmp_path):
    text = open(os.path.join(REPO, "docs", "EVENTS.md")).read()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = [line.split("#")[1].strip() for line in code.splitlines() if line.startswith("print(")]
    assert result.stdout.strip().splitlines() == printed
