"""keras-bn under tf.distribute: MirroredStrategy on 2 logical CPU devices and
MultiWorkerMirroredStrategy with 2 worker processes on 127.0.0.1.

Logical devices must be configured before TensorFlow initializes its devices, so the
distributed runs happen in child processes (tests/_mirrored_helper.py,
tests/_multiworker_helper.py) with bounded time; the tests assert on their JSON output.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_bn import distribute
from tests._events import scalar_series, tag_step_counts

ROOT = Path(__file__).resolve().parents[1]


def _child_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), **extra)
    if "TF_CONFIG" not in extra:
        env.pop("TF_CONFIG", None)
    return env


def _result(stdout: str, stderr: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line; stderr tail:\n{stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("mirrored")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_mirrored_helper.py"), str(log_dir)],
                          cwd=ROOT, env=_child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _result(proc.stdout, proc.stderr)


@pytest.mark.parametrize("norm", ["none", "sync_batch"])
def test_mirrored_gradient_norms_equal_single_device(mirrored, norm):
    run = mirrored[norm]
    assert mirrored["replicas"] == 2
    assert run["loss_finite"] and run["steps"] == [1, 2, 3]
    # The tap reads the all-reduced gradient: the global batch's, as on one device.
    assert _rel(run["global_mirrored"], run["global_single"]) < 1e-4
    assert _rel(run["layer_mirrored"], run["layer_single"]) < 1e-4
    assert run["weights_max_diff"] < 1e-5
    # Written once: one event file, each tag once per step, activation stats included.
    assert run["events_files"] == 1 and run["max_tag_count"] == 1
    assert run["activation_tags"] == ["activation_mean/block1_relu", "activation_mean/block2_relu"]


def test_mirrored_sync_batchnorm_statistics_and_folding(mirrored):
    run = mirrored["sync_batch"]
    assert run["moving_mean_moved"] > 1e-3  # the statistics did change
    assert run["moving_mean_diff"] < 1e-5 and run["moving_var_diff"] < 1e-5
    assert run["fold_bn_left"] == 0 and run["fold_diff"] < 1e-5


def test_mirrored_clipping_applies_to_the_aggregated_gradient(mirrored):
    clip = mirrored["clip"]
    # SGD(lr=1, global_clipnorm=0.05): the weight change is the applied gradient.
    assert clip["single"] == pytest.approx(0.05, rel=1e-4)
    assert clip["mirrored_keras_bn"] == pytest.approx(0.05, rel=1e-4)
    # Keras' own order clips each replica's share, then sums: more than the limit. When this
    # fails, Keras clips after aggregation itself and the hook is no longer needed.
    assert clip["mirrored_keras"] > 0.06
    preclip = mirrored["preclip_single"]
    for preset in ("clip_per_variable", "global_clip"):
        run = mirrored[preset]
        assert run["hook_kept"] and run["hook_after_fit"]
        assert run["preclip"] == pytest.approx(preclip, rel=1e-4)
        assert run["clip_fraction"] == 1.0
    assert mirrored["global_clip"]["applied"] == pytest.approx(0.05, rel=1e-4)
    # clipnorm: every variable to 0.05; a layer (kernel + bias) to at most 0.05 * sqrt(2).
    assert mirrored["clip_per_variable"]["layer_applied_max"] <= 0.05 * np.sqrt(2) * (1 + 1e-5)
    assert mirrored["clip_per_variable"]["applied"] == pytest.approx(0.05 * np.sqrt(6), rel=1e-4)


def test_mirrored_mixed_float16_norms_unscaled(mirrored):
    run = mirrored["mixed_float16"]
    assert run["finite"]
    assert _rel(run["global_step1"], run["float32_step1"]) < 1e-2


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_multiworker_two_processes(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    log_dir = tmp_path / "run"
    procs, results = [], []
    try:
        for index in range(2):
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "_multiworker_helper.py"), str(log_dir)],
                cwd=ROOT, env=_child_env(TF_CONFIG=config),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr[-4000:]
            results.append(_result(stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    chief, worker = results
    assert chief["chief"] and not worker["chief"]
    assert chief["replicas"] == worker["replicas"] == 2
    assert chief["steps"] == worker["steps"] == 4
    assert np.all(np.isfinite(chief["loss"]))
    for a, b in zip(chief["weights"], worker["weights"]):
        np.testing.assert_array_equal(a, b)
    assert chief["latest_norms"] == pytest.approx(worker["latest_norms"], rel=1e-6)
    # Only the chief wrote: one event file, each tag once per step, steps 1..4 logged.
    files = list((log_dir / "train").glob("events.out.tfevents.*"))
    assert len(files) == 1 and sorted(log_dir.iterdir()) == [log_dir / "doctor", log_dir / "report.md", log_dir / "train"]
    counts = tag_step_counts(log_dir / "train")
    assert max(counts.values()) == 1
    assert {s for t, s in counts if t == "grad_global/norm"} == {1, 2, 3, 4}
    # The upstream canary: both fallbacks of keras_bn.distribute.apply_keras_compat were needed.
    # If this fails, keras-team/keras#20585 / tensorflow#72388 are fixed in the installed
    # Keras and the compat wrappers can be removed.
    assert chief["compat_used"] == ["reduce_scalar", "symbolic_build"], chief["compat_used"]


def test_is_chief_follows_keras_convention():
    cluster = {"worker": ["a:1", "b:2"]}
    assert distribute.is_chief("")
    assert distribute.is_chief(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert not distribute.is_chief(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    with_chief = {"chief": ["c:3"], **cluster}
    assert not distribute.is_chief(json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert distribute.is_chief(json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}}))


def test_non_chief_writers_write_nothing(tmp_path, monkeypatch):
    from keras_bn.callbacks import RunWriters

    config = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    writers = RunWriters(str(tmp_path / "w1"))
    with writers.writing("train", 1) as write:
        write.scalar("x", 1.0)
    writers.close()
    assert not (tmp_path / "w1").exists()
    monkeypatch.setenv("TF_CONFIG", json.dumps({**config, "task": {"type": "worker", "index": 0}}))
    writers = RunWriters(str(tmp_path / "w0"))
    with writers.writing("train", 1) as write:
        write.scalar("x", 1.0)
    writers.close()
    assert tag_step_counts(tmp_path / "w0" / "train") == {("x", 1): 1}


def test_strategy_names_and_no_strategy_noops():
    import keras

    assert distribute.make_strategy("none") is None and distribute.make_strategy(None) is None
    with pytest.raises(ValueError, match="strategy"):
        distribute.make_strategy("tpu")
    with pytest.raises(ValueError, match="mixed_precision"):
        distribute.set_mixed_precision("float8")
    optimizer = keras.optimizers.Adam(global_clipnorm=1.0)
    assert distribute.clip_after_aggregation(optimizer) is optimizer
    assert distribute.AggregationHook.of(optimizer, create=False) is None  # nothing patched off a strategy
    assert distribute.AggregationHook.supported(optimizer)


def test_recipe_runs_under_strategy_and_mixed_precision(tmp_path, capsys):
    """--strategy/--mixed-precision from _common.base_parser reach every recipe (one device here)."""
    import keras

    from keras_bn.recipes import _common, bn_vs_no_bn

    args = _common.base_parser("x", "y").parse_args(["--strategy", "multiworker", "--mixed-precision", "float16"])
    assert (args.strategy, args.mixed_precision) == ("multiworker", "float16")
    results = bn_vs_no_bn.main(["--quick", "--epochs", "1", "--dataset", "fashion_mnist_small", "--log-dir",
                                str(tmp_path), "--strategy", "mirrored", "--mixed-precision", "bfloat16"])
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    for run in ("no_bn", "with_bn"):
        assert results["history"][run]["test_accuracy"][-1] > 0.3
        counts = tag_step_counts(Path(results["log_dir"]) / run / "train")
        assert max(counts.values()) == 1
        norms = list(scalar_series(Path(results["log_dir"]) / run / "train", "grad_global/norm").values())
        assert norms and all(0 < v < 1e3 for v in norms)  # unscaled, finite
