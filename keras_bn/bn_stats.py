"""Check BatchNormalization's two modes on a batch: moving statistics never updated, too slow, or frozen.

At test time BN normalizes with its moving statistics, in training with the batch's (SEEDS §5);
`check_batchnorm` compares the two for every BN layer of a model of any style and says which
layers would behave differently at inference, why, and what to do.

Usage::

    result = keras_bn.check_batchnorm(model, x_train[:512])
    print(result)          # one row per BN layer, the output gap, advice per flagged status
    result.ok, result.flagged
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from keras_bn.callbacks._layers import iter_layers
from keras_bn._tables import format_table
from keras_bn._validation import check_float

__all__ = ["BatchNormReport", "BatchNormRow", "check_batchnorm"]


@dataclasses.dataclass
class BatchNormRow:
    """One BatchNormalization layer in a `BatchNormReport`.

    `mean_shift` is the RMS over channels of ``|moving_mean - batch_mean| / batch_std``;
    `var_ratio` is the geometric mean over channels of ``max(r, 1/r)`` with
    ``r = (moving_var + eps) / (batch_var + eps)`` (1.0 means a perfect match).
    """

    name: str
    channels: int
    momentum: float
    trainable: bool
    mean_shift: float
    var_ratio: float
    status: str  # "ok", "never updated", "frozen" or "stale"
    advice: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_ADVICE = {
    "never updated": (
        "its moving statistics still hold their initial values (mean 0, variance 1): the model "
        "never ran in training mode (fit, or a call with training=True), or the weights were "
        "loaded without them. Train it, or recompute the statistics by running training data "
        "through the model with training=True before evaluating."
    ),
    "frozen": (
        "the layer is frozen (trainable=False), so Keras runs it in inference mode even inside "
        "fit() and never updates its moving statistics, while the layers below it changed. "
        "Unfreeze it (layer.trainable = True) for a few epochs, or keep it frozen only if the "
        "layers below it are frozen too."
    ),
    "stale": (
        "its moving statistics are far from the statistics of this batch: with momentum={m} the "
        "moving average keeps momentum**steps of its old value, which is too slow for a short "
        "run ({m}**100 = {m100:.2f}). Train longer, lower `momentum`, or recompute the "
        "statistics; if this batch is not from the training distribution, check the input "
        "preprocessing first."
    ),
}


@dataclasses.dataclass
class BatchNormReport:
    """The result of `check_batchnorm`: one `BatchNormRow` per BN layer plus the output gap.

    `ok` is True when no BN layer was flagged. `output_gap` is the largest absolute difference
    between training-mode and inference-mode outputs on the batch (noise layers switched off),
    `output_gap_rel` the same divided by the inference outputs' standard deviation.
    """

    rows: list[BatchNormRow]
    output_gap: float
    output_gap_rel: float
    mean_tol: float
    var_tol: float

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def flagged(self) -> list[BatchNormRow]:
        return [row for row in self.rows if not row.ok]

    def __str__(self) -> str:
        verdict = "OK" if self.ok else f"{len(self.flagged)} of {len(self.rows)} BN layers flagged"
        lines = [
            f"check_batchnorm: {verdict}. Training vs inference outputs differ by up to "
            f"{self.output_gap:.3g} ({self.output_gap_rel:.3g} x the output std). "
            f"Flagged when mean_shift > {self.mean_tol:g} or var_ratio > {self.var_tol:g}."
        ]
        if not self.rows:
            return lines[0] + "\nThe model has no BatchNormalization layer."
        rows = [
            (r.name, str(r.channels), f"{r.momentum:g}", str(r.trainable), f"{r.mean_shift:.3f}",
             f"{r.var_ratio:.3f}", r.status)
            for r in self.rows
        ]
        lines.append(format_table(["layer", "channels", "momentum", "trainable", "mean_shift", "var_ratio", "status"], rows))
        by_status: dict[str, list[BatchNormRow]] = {}
        for r in self.flagged:
            by_status.setdefault(r.status, []).append(r)
        for status, group in by_status.items():
            names = ", ".join(r.name for r in group[:5]) + (", ..." if len(group) > 5 else "")
            lines.append(f"{status} ({len(group)}: {names}): {group[0].advice}")
        return "\n".join(lines)


def _batchnorm_layers(model):
    """``(path, bn)`` for every BatchNormalization inside `model`: nested models, keras-bn blocks,
    a subclassed model's attributes and a user layer's parts alike (each once)."""
    return [(path, layer) for path, layer in iter_layers(model, parts=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


_NOISE = (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout)


def _noise_layers(model):
    return [layer for _, layer in iter_layers(model, parts=True) if isinstance(layer, _NOISE)]


def _flat_outputs(outputs) -> np.ndarray:
    # convert_to_numpy: a torch output that requires grad has no __array__ without detach
    return np.concatenate([np.asarray(keras.ops.convert_to_numpy(o), dtype=np.float64).ravel()
                           for o in keras.tree.flatten(outputs)])


def _moving_stats(bn):
    return (np.asarray(keras.ops.convert_to_numpy(bn.moving_mean), np.float64),
            np.asarray(keras.ops.convert_to_numpy(bn.moving_variance), np.float64))


def _restore(variables, values) -> None:
    for v, value in zip(variables, values):
        v.assign(value)


def check_batchnorm(model, x, *, mean_tol: float = 0.5, var_tol: float = 2.0) -> BatchNormReport:
    """Compare BN's training and inference modes on the batch `x`; flag stale moving statistics.

    For every BatchNormalization layer (nested models included) the moving mean and variance
    are compared with the batch statistics of that layer's input, as seen in training mode.
    A layer is flagged when ``mean_shift > mean_tol`` (shift in batch standard deviations,
    RMS over channels) or ``var_ratio > var_tol`` (see `BatchNormRow`), and the report says
    why (never updated, frozen, stale) and what to do. It also measures how far the model's
    training-mode outputs are from its inference-mode outputs (dropout/noise switched off).

    The model's weights, moving statistics and layer settings are restored afterwards.

    Args:
        model: a ``keras.Model`` of any style: Sequential, Functional, nested or subclassed
            (an unbuilt one is built by a call on `x`). BN layers are found wherever the
            model tracks them (nested models, keras-bn blocks, a user layer's attributes); a
            BN layer called twice in one pass is measured on its last call.
        x: a batch the model accepts, ideally from the training data; at least 2 samples.
        mean_tol: flag threshold for `mean_shift`.
        var_tol: flag threshold for `var_ratio` (>= 1).

    Returns:
        A `BatchNormReport`: ``print`` it, test ``.ok``, read ``.rows``.

    Example::

        result = keras_bn.check_batchnorm(model, x_train[:512])
        if not result.ok:
            print(result)
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r} of type {type(model).__name__}")
    mean_tol = check_float("mean_tol", mean_tol, low=0.0, low_inclusive=False)
    var_tol = check_float("var_tol", var_tol, low=1.0, low_inclusive=False)
    leaves = keras.tree.flatten(x)
    shape = getattr(leaves[0], "shape", None) if leaves else None
    if not shape or shape[0] is None or int(shape[0]) < 2:
        raise ValueError(
            "`x` must be a batch of at least 2 samples (batch statistics need several). "
            f"Received: x with shape {shape}"
        )

    if not model.built:  # a subclassed model or a Sequential without Input builds on its first call
        model(x, training=False)
    bns = list(_batchnorm_layers(model))
    noise = list(_noise_layers(model))
    variables = list(model.variables)
    saved_values = [np.array(keras.ops.convert_to_numpy(v)) for v in variables]
    saved_attrs = [(bn, bn.momentum, bn.trainable) for _, bn in bns]
    saved_noise = [(layer, dict((a, getattr(layer, a)) for a in ("rate", "stddev") if hasattr(layer, a)))
                   for layer in noise]
    try:
        for layer, attrs in saved_noise:
            for a in attrs:
                setattr(layer, a, 0.0)
        # With momentum 0 a training-mode call leaves each layer's batch statistics in its
        # moving statistics, whatever the model's structure; the outputs are unaffected.
        trainable = [bn for _, bn in bns if bn.trainable]
        for bn in trainable:
            bn.momentum = 0.0
        train_out = _flat_outputs(model(x, training=True))
        batch_stats = {id(bn): _moving_stats(bn) for bn in trainable}
        # A frozen layer runs in inference mode; unfreeze one at a time so that every other
        # layer still behaves as in fit().
        for _, bn in bns:
            if id(bn) in batch_stats:
                continue
            _restore(variables, saved_values)
            bn.trainable, bn.momentum = True, 0.0
            model(x, training=True)
            batch_stats[id(bn)] = _moving_stats(bn)
            bn.trainable = False
    finally:
        for bn, momentum, trainable in saved_attrs:
            bn.momentum = momentum
            bn.trainable = trainable
        for layer, attrs in saved_noise:
            for a, value in attrs.items():
                setattr(layer, a, value)
        _restore(variables, saved_values)
    infer_out = _flat_outputs(model(x, training=False))
    gap = float(np.max(np.abs(train_out - infer_out))) if train_out.size else 0.0
    gap_rel = gap / (float(np.std(infer_out)) + 1e-12)

    rows = []
    for name, bn in bns:
        b_mean, b_var = batch_stats[id(bn)]
        eps = float(bn.epsilon)
        m_mean, m_var = _moving_stats(bn)
        shift = float(np.sqrt(np.mean(((m_mean - b_mean) / np.sqrt(b_var + eps)) ** 2)))
        ratio = float(np.exp(np.mean(np.abs(np.log((m_var + eps) / (b_var + eps))))))
        status = "ok"
        if shift > mean_tol or ratio > var_tol:
            if not bn.trainable:
                status = "frozen"
            elif not m_mean.any() and np.all(m_var == 1.0):
                status = "never updated"
            else:
                status = "stale"
        advice = _ADVICE.get(status, "").format(m=bn.momentum, m100=bn.momentum**100)
        rows.append(BatchNormRow(name, int(m_mean.shape[0]), float(bn.momentum), bool(bn.trainable),
                                 shift, ratio, status, advice))
    return BatchNormReport(rows, gap, gap_rel, mean_tol, var_tol)
