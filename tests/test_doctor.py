"""The doctor's rules: each fires on its broken run, and its healthy twin fires nothing.

Rules are pure functions over series, so most are tested on synthetic series here (a fault
and its twin); a few end-to-end fits of tiny models check the live Doctor on the faults of
issue #19's catalogue (lr far too high, softmax head x100, zero init, BN at batch 2, frozen
BN, clip far below the gradient norm, stale BN statistics, lr far too low, tiny init on a
deep tanh net, a tiny train set trained long) on a plain Keras model, not a keras-bn builder.
"""

import math

import keras
import numpy as np
import pytest

from keras_bn import doctor
from keras_bn._doctor_base import RULES, RunFacts
from keras_bn.doctor import evaluate, initial_loss_verdict, step_losses

CLASSIFIER = RunFacts(loss={"kind": "categorical", "num_classes": 10})
SERIOUS = ("error", "warning")


def rules_of(findings, severities=("error", "warning", "info")):
    return {f.rule for f in findings if f.severity in severities}


def running_means(step_values, steps_per_epoch, every):
    """``batch_loss`` as MetricsLogger writes it: the running epoch mean every `every` steps
    and at each epoch end (no validation)."""
    points, epoch_losses, total = [], [], 0.0
    for step, value in enumerate(step_values, start=1):
        k = (step - 1) % steps_per_epoch + 1
        total = value if k == 1 else total + value
        if step % every == 0 or k == steps_per_epoch:
            points.append((step, total / k))
        if k == steps_per_epoch:
            epoch_losses.append((step // steps_per_epoch - 1, total / k))
    return {"batch_loss": points, "epoch_loss": epoch_losses}


# --- the shared initial-loss helper and the per-window loss ----------------------------------
def test_initial_loss_verdict_matches_ln_c():
    assert initial_loss_verdict(2.9, 10) == (True, pytest.approx(math.log(10)))
    assert initial_loss_verdict(14.0, 10)[0] is False
    assert initial_loss_verdict(float("nan"), 10)[0] is False
    assert initial_loss_verdict(math.log(10) * 1.6, 10)[0] is False  # 60% off > the 50% tolerance


def test_sanity_and_doctor_share_one_initial_loss_definition():
    from keras_bn import sanity

    assert sanity.expected_initial_loss is doctor.expected_initial_loss
    assert doctor.expected_initial_loss("sparse_categorical_crossentropy", 4) == (pytest.approx(math.log(4)), "ln(C)")
    assert doctor.expected_initial_loss(keras.losses.CategoricalFocalCrossentropy(), 4) is None  # not ln(C)
    # The sanity check's verdict is the doctor's: a model whose initial loss sits just inside and
    # just outside 0.5 ln(C) (uniform softmax outputs shifted by a constant through the head bias).
    x = np.zeros((8, 3), "float32")
    y = np.zeros(8, "int64")
    for logit, passed in ((0.5, True), (1.5, False)):  # loss 1.78 and 2.67 vs 2.08 = 1.5 ln 4
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(
            4, activation="softmax", kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant([-logit, 0.0, 0.0, 0.0]))])
        result = sanity.check_initial_loss(model, x, y)
        p0 = math.exp(-logit) / (math.exp(-logit) + 3)
        assert result.loss == pytest.approx(-math.log(p0), rel=1e-5)
        assert result.passed is passed is initial_loss_verdict(-math.log(p0), 4)[0]
    facts = doctor.model_facts(_compiled_head(keras.losses.CategoricalFocalCrossentropy()))
    assert facts.loss == {"kind": "other"}  # the doctor's initial-loss rule then says nothing
    facts = doctor.model_facts(_compiled_head(keras.losses.SparseCategoricalCrossentropy(from_logits=True)))
    assert facts.loss == {"kind": "categorical", "num_classes": 4}


def _compiled_head(loss):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss=loss)
    return model


def test_step_losses_recover_window_means_from_running_means():
    rng = np.random.default_rng(0)
    values = list(2.0 + rng.normal(size=60))
    series = running_means(values, steps_per_epoch=25, every=10)
    windows = step_losses(series, RunFacts())  # epoch ends found by matching epoch_loss
    steps = [s for s, _ in windows]
    assert steps == [10, 20, 25, 30, 40, 50, 60]
    bounds = [0, 10, 20, 25, 30, 40, 50]  # the 3rd epoch (51-60) is unfinished: no epoch_loss
    expected = [np.mean(values[a:b]) for a, b in zip(bounds, steps)]
    np.testing.assert_allclose([v for _, v in windows], expected, rtol=1e-9)
    facts = RunFacts(epoch_starts=[0, 25, 50], epoch_ends={"0": 25, "1": 50})
    np.testing.assert_allclose([v for _, v in step_losses(series, facts)], expected, rtol=1e-9)


def test_epoch_end_batch_loss_holding_the_validation_loss_is_replaced():
    series = running_means([2.0] * 20, steps_per_epoch=10, every=5)
    series["batch_loss"] = [(5, 2.0), (10, 9.0), (15, 2.0), (20, 9.0)]  # Keras' metrics hold val at epoch end
    series["validation/epoch_loss"] = [(0, 9.0), (1, 9.0)]
    assert [v for _, v in step_losses(series, RunFacts())] == pytest.approx([2.0] * 4)
    assert "diverging" not in rules_of(evaluate(series, CLASSIFIER))


# --- loss rules on series -------------------------------------------------------------------
def decaying(n, start=2.3, end=0.5):
    return list(start + (end - start) * (1 - np.exp(-np.arange(n) / (n / 4))))


def test_diverging_and_nonfinite_loss():
    values = list(np.linspace(2.3, 9.0, 200))
    series = running_means(values, 100, 20) | {"doctor/initial_loss": [(1, 2.3)]}
    found = evaluate(series, CLASSIFIER)
    diverging = next(f for f in found if f.rule == "diverging")
    assert diverging.severity == "error" and diverging.evidence["initial"] == pytest.approx(2.3)
    assert diverging.evidence["loss"] > 3 * 2.3
    nan = running_means(decaying(200)[:150] + [float("nan")] * 50, 100, 20)
    assert "nonfinite_loss" in rules_of(evaluate(nan, CLASSIFIER))
    healthy = running_means(decaying(200), 100, 20) | {"doctor/initial_loss": [(1, 2.3)]}
    assert not rules_of(evaluate(healthy, CLASSIFIER), SERIOUS)


def test_initial_loss_rule_needs_a_classifier():
    series = {"doctor/initial_loss": [(1, 230.0)], "batch_loss": [(100, 200.0)]}
    finding = next(f for f in evaluate(series, CLASSIFIER) if f.rule == "initial_loss")
    assert finding.step == 1 and "ln(10)" in finding.what
    assert "initial_loss" not in rules_of(evaluate(series, RunFacts(loss={"kind": "other"})))  # regression
    assert "initial_loss" not in rules_of(evaluate({"doctor/initial_loss": [(1, 2.4)]}, CLASSIFIER))


def test_not_learning_and_flat_then_drop():
    rng = np.random.default_rng(1)
    flat = list(2.30 + 0.02 * rng.normal(size=300))
    found = evaluate(running_means(flat, 300, 20), CLASSIFIER)
    assert "not_learning" in rules_of(found)
    drop = [2.30] * 120 + list(np.linspace(2.3, 0.8, 40)) + [0.8] * 140
    found = evaluate(running_means(drop, 300, 20), CLASSIFIER)
    assert "flat_then_drop" in rules_of(found) and "not_learning" not in rules_of(found)
    healthy = evaluate(running_means(decaying(300), 300, 20), CLASSIFIER)
    assert not rules_of(healthy, SERIOUS)


def epochs(train, val):
    return {"epoch_loss": list(enumerate(train)), "validation/epoch_loss": list(enumerate(val))}


def test_plateau_overfitting_underfitting():
    plateau = epochs([2.0, 1.0] + [0.9] * 11, [2.0, 1.0] + [0.9] * 11)
    assert "plateau" in rules_of(evaluate(plateau, RunFacts()))
    overfit = epochs([1.0, 0.6, 0.4, 0.2, 0.1, 0.05], [1.0, 0.7, 0.6, 0.65, 0.75, 0.9])
    found = evaluate(overfit, CLASSIFIER)
    assert "overfitting" in rules_of(found)
    assert next(f for f in found if f.rule == "overfitting").evidence["best_val_loss"] == pytest.approx(0.6)
    underfit = epochs([2.1, 2.0, 1.9], [2.1, 2.0, 1.95])
    assert "underfitting" in rules_of(evaluate(underfit, CLASSIFIER))
    assert "underfitting" not in rules_of(evaluate(underfit, RunFacts()))  # "high" needs ln(C)
    healthy = epochs([1.0, 0.6, 0.45, 0.4, 0.37, 0.35], [1.0, 0.65, 0.5, 0.46, 0.44, 0.43])
    assert not rules_of(evaluate(healthy, CLASSIFIER), SERIOUS)


# --- per-layer rules --------------------------------------------------------------------------
def test_layer_rules_fire_and_healthy_twin_is_silent():
    healthy = {
        "grad_norm/block1_dense": [(100, 0.5), (200, 0.4)],
        "grad_norm/block1_bn": [(100, 1e-6), (200, 1e-6)],
        "grad_norm/block2_dense": [(100, 0.6), (200, 0.5)],
        "grad_norm/output": [(100, 90.0), (200, 80.0)],  # the head is never compared
        "update_ratio/block1_dense": [(100, 1.2e-3), (200, 1e-3)],
        "dead_fraction/block1_relu": [(100, 0.05), (200, 0.1)],
        "dead_fraction/block2_relu": [(100, 0.0), (200, 0.2)],
        "activation_std/block1_relu": [(200, 0.8)],
        "activation_std/block2_relu": [(200, 0.7)],
        "saturation/output": [(200, 0.95)],  # a confident sigmoid head saturates by design
        "activation_std/output": [(200, 0.01)],
    }
    assert evaluate(healthy, RunFacts()) == []
    broken = {
        "grad_norm/block2_dense": [(100, 1e-7), (200, 1e-7)],
        "grad_norm/block10_dense": [(100, 1.0), (200, 1.0)],
        "dead_fraction/block3_relu": [(0, 0.1), (200, 0.5), (400, 0.62), (500, 0.62)],
        "saturation/block4_tanh": [(0, 0.9)],
        "update_ratio/block2_dense": [(0, 0.3), (100, 0.2)],
        "update_ratio/block10_dense": [(0, 1e-7)],
        "nonfinite/grad_steps": [(0, 0.0), (100, 3.0)],
    }
    found = {(f.rule, f.layer): f for f in evaluate(broken, RunFacts())}
    assert found[("dead_units", "block3_relu")].step == 200
    assert str(found[("dead_units", "block3_relu")]) == (
        "step 200  block3_relu  dead units 62% (> 40%): lower the learning rate or use He init / leaky_relu")
    assert found[("saturated_units", "block4_tanh")].evidence["saturation"] == pytest.approx(0.9)
    assert found[("update_ratio_high", "block2_dense")].evidence["update_ratio"] == pytest.approx(0.25)
    assert ("update_ratio_low", "block10_dense") in found
    assert found[("vanishing_gradients", "block2_dense")].evidence["ratio"] == pytest.approx(1e-7)
    assert found[("nonfinite_gradients", None)].severity == "error"


def test_gradient_comparison_uses_comparable_hidden_layers_only():
    # issue #15 item 7: an LSTM stack with a sigmoid Dense head: never compare the head
    series = {"grad_norm/lstm": [(10, 1e-4)], "grad_norm/lstm_1": [(10, 2e-4)], "grad_norm/dense": [(10, 1.0)],
              "activation_std/lstm_1": [(10, 0.3)], "saturation/dense": [(10, 0.9)],
              "activation_std/dense": [(10, 0.001)]}
    facts = RunFacts(layers=[{"name": "lstm", "class": "LSTM", "kind": "recurrent", "output": False},
                             {"name": "lstm_1", "class": "LSTM", "kind": "recurrent", "output": False},
                             {"name": "dense", "class": "Dense", "kind": "dense", "output": True}])
    assert evaluate(series, facts) == []
    mixed = {"grad_norm/conv1": [(10, 1e-5)], "grad_norm/conv2": [(10, 1e-5)], "grad_norm/dense_a": [(10, 1.0)],
             "grad_norm/dense_b": [(10, 1.0)], "grad_norm/dense_c": [(10, 1.0)], "grad_norm/out": [(10, 1.0)]}
    assert not rules_of(evaluate(mixed, RunFacts()))  # only the three dense layers are compared


def test_zero_gradient_and_collapsing_activations():
    zero = {"grad_norm/block1_dense": [(10, 0.0), (20, 0.0)], "grad_norm/block2_dense": [(10, 0.0), (20, 0.0)],
            "grad_norm/logits": [(10, 0.3), (20, 0.3)]}
    found = evaluate(zero, RunFacts())
    assert {(f.rule, f.layer) for f in found} == {("no_gradient", "block1_dense"), ("no_gradient", "block2_dense")}
    collapse = {"activation_std/block1_tanh": [(0, 0.2)], "saturation/block1_tanh": [(0, 0.0)],
                "activation_std/block6_tanh": [(0, 1e-4)], "saturation/block6_tanh": [(0, 0.0)]}
    finding = evaluate(collapse, RunFacts())[0]
    assert finding.rule == "collapsing_activations" and finding.evidence["ratio"] == pytest.approx(5e-4)


def test_what_the_live_doctor_saw_and_then_eased_is_still_diagnosed(tmp_path):
    """The collapse at step 10 eased by step 30: the rules on the whole run (last values) find
    nothing, the live Doctor found it at step 10, and `diagnose` reports it, as `report` does."""
    from keras_bn.doctor import diagnose, evaluate_run
    from keras_bn.events import EventFileWriter

    series = {"activation_std/block1_tanh": [(10, 0.2), (30, 0.2)],
              "activation_std/block6_tanh": [(10, 1e-4), (30, 0.1)]}
    assert not evaluate(series, RunFacts())
    seen = evaluate({tag: values[:1] for tag, values in series.items()}, RunFacts())  # the live read at step 10
    assert [f.rule for f in seen] == ["collapsing_activations"]
    writer = EventFileWriter(str(tmp_path / "train"))
    for step in (10, 30):
        writer.add_scalars(step, {tag: dict(values)[step] for tag, values in series.items()})
    writer.close()
    RunFacts(findings=[f.to_dict() for f in seen]).save(tmp_path)
    found = diagnose(tmp_path)
    assert [(f.rule, f.step) for f in found] == [("collapsing_activations", 10)]
    assert evaluate_run(series, RunFacts.load(tmp_path)) == found
    assert not diagnose_without_facts(tmp_path)


def diagnose_without_facts(log_dir):
    from keras_bn.doctor import evaluate_run, read_series

    return evaluate_run(read_series(log_dir), RunFacts())


def test_clipping_rules():
    binds = {"grad_global/clip_fraction": [(100, 0.9), (200, 1.0)]}
    assert rules_of(evaluate(binds, RunFacts())) == {"clip_binds_mostly"}
    never = {"grad_global/clip_fraction": [(100, 0.0), (200, 0.0)]}
    assert {(f.rule, f.severity) for f in evaluate(never, RunFacts())} == {("clip_never_binds", "info")}
    norms = [(i * 10, 1.0 + 0.1 * (i % 3)) for i in range(1, 12)]
    spike = {"grad_global/norm_preclip": norms[:8] + [(90, 50.0)] + norms[9:],
             "grad_global/clip_fraction": [(s, 0.05) for s, _ in norms]}
    found = evaluate(spike, RunFacts())
    assert rules_of(found) == {"gradient_spike"} and found[0].step == 90
    healthy = {"grad_global/norm_preclip": norms, "grad_global/clip_fraction": [(s, 0.05) for s, _ in norms]}
    assert evaluate(healthy, RunFacts()) == []


def test_batchnorm_rules_from_facts():
    facts = RunFacts(batchnorm=[{"name": "bn_a", "momentum": 0.1, "trainable": True},
                                {"name": "bn_b", "momentum": 0.99, "trainable": False}], batch_size=2)
    found = {(f.rule, f.layer, f.severity) for f in evaluate({"doctor/bn_gap/bn_a": [(10, 0.9)]}, facts)}
    assert found == {("stale_bn_statistics", "bn_a", "warning"), ("bn_small_batch", None, "warning"),
                     ("bn_pytorch_momentum", "bn_a", "warning"), ("bn_frozen", "bn_b", "info")}
    healthy = RunFacts(batchnorm=[{"name": "bn_a", "momentum": 0.99, "trainable": True}], batch_size=32)
    assert evaluate({"doctor/bn_gap/bn_a": [(10, 0.05)]}, healthy) == []


def test_every_rule_has_a_source_remedy_and_known_severity():
    for rule in RULES.values():
        assert rule.severity in ("error", "warning", "info") and rule.source and rule.remedy.strip()
    covered = {"nonfinite_loss", "diverging", "nonfinite_gradients", "initial_loss", "no_gradient", "not_learning",
               "flat_then_drop", "plateau", "overfitting", "underfitting", "dead_units", "saturated_units",
               "update_ratio_high", "update_ratio_low", "vanishing_gradients", "exploding_gradients",
               "collapsing_activations", "clip_binds_mostly", "clip_never_binds", "gradient_spike",
               "stale_bn_statistics", "bn_small_batch", "bn_frozen", "bn_pytorch_momentum"}
    assert set(RULES) == covered  # each is fired by a test in this file


def test_format_findings_ranks_groups_and_caps():
    series = {f"dead_fraction/block{i}_relu": [(10, 0.9)] for i in range(1, 31)}
    series["nonfinite/grad_steps"] = [(10, 2.0)]
    text = doctor.format_findings(evaluate(series, RunFacts()), max_per_severity=5)
    lines = text.splitlines()
    assert lines[0] == "doctor: 1 error, 30 warnings"
    assert lines[1] == "error:" and lines[3] == "warnings:" and lines[4] == "  dead_units (30 layers):"
    assert lines[5].startswith("    step 10  block1_relu  dead units 90%")  # natural order: block1, block2, ...
    assert lines[-1] == "  ... and 25 more warnings"


# --- the catalogue of broken runs, end to end (plain Keras models, not keras-bn builders) ------
import keras_bn  # noqa: E402


def blobs(n=512, features=16, classes=4, seed=0):
    """A learnable classification set: labels of a random linear map of Gaussian inputs."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(features, classes)), axis=1)
    return x, y


def mlp(hidden=(32, 32), activation="relu", classes=4, init="glorot_uniform", head_scale=1.0, bn=False,
        momentum=0.99, features=16):
    inputs = keras.Input((features,))
    h = inputs
    for i, units in enumerate(hidden, start=1):
        h = keras.layers.Dense(units, kernel_initializer=init, name=f"hidden{i}")(h)
        if bn:
            h = keras.layers.BatchNormalization(momentum=momentum, name=f"bn{i}")(h)
        h = keras.layers.Activation(activation, name=f"act{i}")(h)
    logits = keras.layers.Dense(classes, kernel_initializer=init, name="head")(h)
    if head_scale != 1.0:
        logits = keras.layers.Rescaling(head_scale, name="head_scale")(logits)
    return keras.Model(inputs, keras.layers.Softmax(name="probs")(logits))


def diagnosed_fit(tmp_path, model, x, y, *, optimizer=None, epochs=2, batch_size=32, every=8, probe=True,
                  validation=None, callbacks=()):
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    cbs = keras_bn.callbacks.diagnostics(str(tmp_path), probe=x[:128] if probe else None, every=every,
                                         figures=False)
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, validation_data=validation,
              callbacks=[*cbs, *callbacks])
    live = cbs[-1].findings
    offline = doctor.diagnose(tmp_path)
    return live, offline


def test_lr_far_too_high_diverges_and_stop_on_stops_fit(tmp_path, capsys):
    x, y = blobs()
    live, offline = diagnosed_fit(tmp_path / "high", mlp(), x, y, optimizer=keras.optimizers.SGD(50.0), probe=False)
    assert rules_of(live, ("error",)) & {"diverging", "nonfinite_loss"}
    assert rules_of(offline, ("error",)) & {"diverging", "nonfinite_loss"}
    printed = capsys.readouterr().out
    assert any(line.startswith("step ") and ("3x the initial" in line or "turned" in line) for line in printed.splitlines())
    model = mlp()
    model.compile(optimizer=keras.optimizers.SGD(50.0), loss="sparse_categorical_crossentropy")
    cbs = keras_bn.callbacks.diagnostics(str(tmp_path / "stop"), every=2, figures=False)
    cbs[-1].stop_on = {"diverging", "nonfinite_loss"}
    history = model.fit(x, y, epochs=20, batch_size=32, verbose=0, callbacks=cbs)
    assert cbs[-1].stopped_by is not None and len(history.history["loss"]) < 20
    _, twin = diagnosed_fit(tmp_path / "twin", mlp(), x, y, probe=False)
    assert not rules_of(twin, SERIOUS)


def test_softmax_head_scaled_x100_fires_initial_loss(tmp_path):
    x, y = blobs()
    live, offline = diagnosed_fit(tmp_path / "x100", mlp(head_scale=100.0), x, y, epochs=1)
    finding = next(f for f in offline if f.rule == "initial_loss")
    assert finding.step == 1 and finding.evidence["loss"] > 2 * math.log(4)
    assert "initial_loss" in rules_of(live)
    _, twin = diagnosed_fit(tmp_path / "twin", mlp(), x, y, epochs=1)
    assert not rules_of(twin, SERIOUS)


def test_zero_init_fires_no_gradient(tmp_path):
    x, y = blobs()
    _, offline = diagnosed_fit(tmp_path / "zero", mlp(init="zeros"), x, y, epochs=1)
    assert {(f.rule, f.layer) for f in offline if f.rule == "no_gradient"} == {("no_gradient", "hidden1"),
                                                                               ("no_gradient", "hidden2")}


def test_batchnorm_at_batch_2_frozen_and_pytorch_momentum(tmp_path):
    x, y = blobs(n=64)
    model = mlp(bn=True, momentum=0.1)
    model.get_layer("bn2").trainable = False
    _, offline = diagnosed_fit(tmp_path / "bn", model, x, y, epochs=1, batch_size=2, probe=False)
    found = {(f.rule, f.layer): f for f in offline}
    assert found[("bn_small_batch", None)].evidence["batch_size"] == 2
    assert found[("bn_pytorch_momentum", "bn1")].evidence["momentum"] == pytest.approx(0.1)
    assert found[("bn_frozen", "bn2")].severity == "info"
    x, y = blobs(n=256)
    _, twin = diagnosed_fit(tmp_path / "twin", mlp(bn=True, momentum=0.9), x, y, epochs=3, batch_size=32)
    assert not rules_of(twin) & {"bn_small_batch", "bn_pytorch_momentum", "bn_frozen"}
    assert not rules_of(twin, SERIOUS)


@pytest.mark.slow  # the rule is covered on series above; this is the end-to-end run
def test_clip_far_below_the_gradient_norm_binds_on_every_step(tmp_path):
    x, y = blobs()
    _, offline = diagnosed_fit(tmp_path / "clip", mlp(), x, y, optimizer=keras.optimizers.SGD(0.1, global_clipnorm=1e-3))
    finding = next(f for f in offline if f.rule == "clip_binds_mostly")
    assert finding.evidence["clip_fraction"] == pytest.approx(1.0)
    _, twin = diagnosed_fit(tmp_path / "twin", mlp(), x, y, optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=1e3),
                            epochs=7, probe=False)  # 112 steps: enough to say "never"
    assert "clip_binds_mostly" not in rules_of(twin) and not rules_of(twin, SERIOUS)
    assert "clip_never_binds" in rules_of(twin)  # an info: the clip does nothing


@pytest.mark.slow  # the rule is covered on series above; this is the end-to-end run
def test_lr_far_too_low_is_not_learning(tmp_path):
    x, y = blobs(n=2048)
    _, offline = diagnosed_fit(tmp_path / "low", mlp(), x, y, optimizer=keras.optimizers.Adam(1e-8),
                               epochs=4, every=25, probe=False)
    assert "not_learning" in rules_of(offline)
    _, twin = diagnosed_fit(tmp_path / "twin", mlp(), x, y, epochs=4, every=25, probe=False)
    assert "not_learning" not in rules_of(twin) and not rules_of(twin, SERIOUS)


@pytest.mark.slow  # the rule is covered on series above; this is the end-to-end run
def test_tiny_init_deep_tanh_collapses(tmp_path):
    x, y = blobs()
    tiny = keras.initializers.RandomNormal(stddev=0.01, seed=1)
    live, _ = diagnosed_fit(tmp_path / "tiny", mlp(hidden=(64,) * 6, activation="tanh", init=tiny), x, y,
                            optimizer=keras.optimizers.SGD(1e-2), epochs=1)
    assert "collapsing_activations" in rules_of(live)
    live, _ = diagnosed_fit(tmp_path / "twin", mlp(hidden=(64,) * 6, activation="tanh"), x, y,
                            optimizer=keras.optimizers.SGD(1e-2), epochs=1)
    assert not rules_of(live, SERIOUS)


@pytest.mark.slow  # the rule is covered on series above; this is the end-to-end run
def test_tiny_train_set_trained_long_overfits(tmp_path):
    x, y = blobs(n=1024)
    x_val, y_val = x[512:], y[512:]
    _, offline = diagnosed_fit(tmp_path / "tiny_set", mlp(hidden=(128, 128)), x[:32], y[:32],
                               optimizer=keras.optimizers.Adam(1e-2), epochs=40, batch_size=32, every=50,
                               probe=False, validation=(x_val, y_val))
    assert "overfitting" in rules_of(offline)
    _, twin = diagnosed_fit(tmp_path / "twin", mlp(), x[:512], y[:512], optimizer=keras.optimizers.Adam(3e-3),
                            epochs=6, batch_size=32, every=50, probe=False, validation=(x_val, y_val))
    assert not rules_of(twin, SERIOUS)


def test_docs_rules_table_matches_the_rule_table():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "doctor.md").read_text()
    for rule in RULES.values():
        assert f"| `{rule.id}` | {rule.severity} | {rule.threshold} | {rule.source} | {rule.remedy} |" in page
