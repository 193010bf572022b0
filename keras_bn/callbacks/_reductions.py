"""The activation statistics, one implementation: per-chunk sums on the device, merged on the host.

A layer's outputs on the probe are reduced chunk by chunk (`chunk_sums`, written with
``keras.ops``, traced inside the probe function) to sums that add up over chunks: counts,
sums, the squared deviations about the chunk's own mean, min/max and histogram counts.
`merge` combines any number of chunks (the squared deviations with Chan et al.'s pairwise
formula, in float64) and `finalize` turns the result into the statistics. Reading the probe
in one piece is the same code with one chunk. The histogram needs the range of all values
first: with one chunk that is the chunk's own range; with several, a first pass finds it
(see `ActivationStats`).

Every statistic counts finite values only; NaN/Inf are counted under ``nonfinite``. A layer
with no finite output gets NaN statistics (never a made-up 0).

Usage::

    stats = keras_bn.activation_statistics(layer_outputs, "relu")
    stats["dead_fraction"], stats["mean"], stats["histogram"]  # (edges, counts)
"""

from __future__ import annotations

import math

import numpy as np

import keras
from keras import ops

from keras_bn.activations import FAMILY_STATISTICS, NEAR_ZERO, SATURATION_THRESHOLD, saturation_band

__all__ = ["PERCENTILES", "activation_statistics", "chunk_sums", "finalize", "merge", "nearest_rank_percentiles"]

PERCENTILES = (15, 50, 85)  # of the pre-activation of unit 0, the BN paper's Figure 1 view


def chunk_sums(y, family, *, bins: int, hist_range=None, saturation_threshold=SATURATION_THRESHOLD,
               near_zero=NEAR_ZERO, feature_axis: int = -1, histogram: bool = True) -> dict:
    """Sums of one chunk of a layer's outputs `y` (a tensor; traced or eager).

    `hist_range` is ``(low, high)`` of the histogram; None (or NaN) takes this chunk's own
    finite min/max (right when the chunk is all there is). `feature_axis` holds the units.
    """
    y = ops.cast(y, "float32")
    if feature_axis not in (-1, len(y.shape) - 1):
        y = ops.moveaxis(y, feature_axis, -1)
    flat = ops.reshape(y, (-1,))
    finite = ops.isfinite(flat)
    count = _count(finite)
    all_finite = ops.equal(count, ops.size(flat))

    def filled(value):
        """`flat` with non-finite entries replaced by `value`; each statistic fills with a value
        that does not change it. On TensorFlow (traced) no copy when all are finite, the usual
        case; elsewhere always the copy: an eager `ops.cond` on JAX compiles its two branches
        again at every call (new lambdas), seconds per probe read."""
        if keras.backend.backend() != "tensorflow":
            return ops.where(finite, flat, value)
        return ops.cond(all_finite, lambda: flat, lambda: ops.where(finite, flat, value))

    total = ops.sum(filled(0.0))
    chunk_mean = total / ops.cast(ops.maximum(count, 1), "float32")
    sums = {
        "count": count,
        "sum": total,
        "m2": ops.sum(ops.square(filled(chunk_mean) - chunk_mean)),
        "low": ops.min(filled(math.inf)),  # +inf when nothing is finite
        "high": ops.max(filled(-math.inf)),
        "nonfinite": ops.size(flat) - count,
    }
    if family == "relu":
        sums["alive"] = ops.any(ops.reshape(y, (-1, y.shape[-1])) > 0.0, axis=0)  # NaN > 0 is False
        sums["zeros"] = _count(filled(1.0) <= 0.0)
    elif family == "smooth":
        sums["near_zero"] = _count(ops.abs(filled(math.inf)) <= near_zero)
    elif family in ("tanh", "sigmoid"):
        low, high = saturation_band(family, saturation_threshold)
        inside = filled((low + high) / 2.0)
        sums["saturated"] = _count((inside < low) | (inside > high))
    if histogram:
        low, high = _histogram_range(sums["low"], sums["high"])
        if hist_range is not None:  # NaN ends: this chunk's own range
            low = ops.where(ops.isnan(hist_range[0]), low, hist_range[0])
            high = ops.where(ops.isnan(hist_range[1]), high, hist_range[1])
        sums["counts"] = _histogram(filled(low), sums["nonfinite"], low, high, bins)
    return sums


def _count(mask):
    return ops.sum(ops.cast(mask, "int32"))


def _histogram_range(low, high):
    """The finite range, widened to width 1 when all values are equal ([0, 1] when none)."""
    empty = ops.logical_not(ops.isfinite(low))
    low = ops.where(empty, 0.0, low)
    high = ops.where(empty, 1.0, high)
    return low, ops.where(high > low, high, low + 1.0)


def _histogram(values, nonfinite, low, high, bins: int):
    """Counts in `bins` equal bins over [low, high] (the last bin closed) of `values`, whose
    `nonfinite` entries were filled with `low` (so they are taken out of the first bin)."""
    if keras.backend.backend() == "tensorflow":  # 5x faster than the bincount below
        import tensorflow as tf

        counts = tf.histogram_fixed_width(values, ops.stack([low, high]), nbins=bins)
    else:
        index = ops.clip(ops.floor((values - low) * (bins / (high - low))), 0, bins - 1)
        counts = ops.bincount(ops.cast(index, "int32"), minlength=bins)
    return ops.concatenate([counts[:1] - ops.cast(nonfinite, counts.dtype), counts[1:]], axis=0)


def merge(chunks: list[dict]) -> dict:
    """One set of sums from the sums of several chunks (NumPy values), in float64."""
    counts = np.array([int(c["count"]) for c in chunks], np.float64)
    total = counts.sum()
    means = np.array([float(c["sum"]) for c in chunks]) / np.maximum(counts, 1)
    mean = float(np.sum([float(c["sum"]) for c in chunks]) / total) if total else math.nan
    merged = {
        "count": total,
        "sum": float(np.sum([float(c["sum"]) for c in chunks])),
        # Chan et al.: each chunk's deviations about its own mean, moved to the common mean.
        "m2": (float(np.sum([float(c["m2"]) for c in chunks]) + np.sum(counts * (means - mean) ** 2))
               if total else math.nan),
        "low": min(float(c["low"]) for c in chunks),
        "high": max(float(c["high"]) for c in chunks),
        "nonfinite": float(sum(int(c["nonfinite"]) for c in chunks)),
    }
    for key in ("zeros", "near_zero", "saturated"):
        if key in chunks[0]:
            merged[key] = float(sum(int(c[key]) for c in chunks))
    if "alive" in chunks[0]:
        merged["alive"] = np.any([np.asarray(c["alive"]) for c in chunks], axis=0)
    if "counts" in chunks[0]:
        merged["counts"] = np.sum([np.asarray(c["counts"], np.int64) for c in chunks], axis=0)
    return merged


def finalize(sums: dict, bins: int) -> dict:
    """The statistics from merged sums: mean, std, nonfinite, the family's fractions and
    ``histogram = (edges, counts)``. NaN (not 0) where there is no finite value."""
    count = sums["count"]
    stats = {
        "mean": sums["sum"] / count if count else math.nan,
        "std": math.sqrt(max(sums["m2"], 0.0) / count) if count else math.nan,
        "nonfinite": sums["nonfinite"],
    }
    if "alive" in sums:
        stats["dead_fraction"] = 1.0 - float(np.mean(sums["alive"])) if count else math.nan
    for key, name in (("zeros", "zero_fraction"), ("near_zero", "near_zero_fraction"), ("saturated", "saturation")):
        if key in sums:
            stats[name] = sums[key] / count if count else math.nan
    if "counts" in sums:
        low, high = (sums["low"], sums["high"]) if count else (0.0, 1.0)
        high = high if high > low else low + 1.0
        stats["histogram"] = (np.linspace(low, high, bins + 1), sums["counts"].astype(np.float64))
    return stats


def nearest_rank_percentiles(values, qs=PERCENTILES) -> np.ndarray:
    """Nearest-rank percentiles of the finite `values` (rank ``round(q/100 * (n-1))``, half to
    even); NaN when none is finite.

    Example::

        nearest_rank_percentiles(preactivations[:, 0])  # -> [p15, p50, p85]
    """
    values = np.asarray(values, np.float64).reshape(-1)
    values = np.sort(values[np.isfinite(values)])
    if values.size == 0:
        return np.full(len(qs), np.nan)
    return np.array([values[int(round(q / 100.0 * (values.size - 1)))] for q in qs])


def activation_statistics(values, family: str | None = None, *, bins: int = 30,
                          saturation_threshold: float = SATURATION_THRESHOLD, near_zero: float = NEAR_ZERO,
                          feature_axis: int = -1) -> dict:
    """The statistics `ActivationStats` logs, for one layer's outputs `values` (an array).

    `family` is a key of ``keras_bn.activations.FAMILY_STATISTICS`` (what
    ``keras_bn.activations.activation_family(layer)`` returns) or None (mean, std and
    histogram only). Returns floats under ``mean``, ``std``, ``nonfinite`` and the family's
    statistics, and ``histogram = (edges, counts)``.

    Example::

        stats = keras_bn.activation_statistics(model_outputs, "tanh")
        stats["saturation"]  # share of outputs with |y| > 0.97
    """
    if family is not None and family not in FAMILY_STATISTICS:
        raise ValueError(
            f"`family` must be None or one of {sorted(FAMILY_STATISTICS)}. Received: family={family!r}"
        )
    values = keras.ops.convert_to_tensor(np.asarray(values, np.float32))
    sums = chunk_sums(values, family, bins=bins, saturation_threshold=saturation_threshold,
                      near_zero=near_zero, feature_axis=feature_axis)
    sums = {k: keras.ops.convert_to_numpy(v) for k, v in sums.items()}
    return finalize(merge([sums]), bins)
