"""Normalization registry: none, batch, layer, group and sync_batch as Keras layers.

- ``"batch"``: BatchNormalization, statistics over every axis but the channel axis
  (N for dense features, N, H, W per channel for conv; SEEDS §5).
- ``"sync_batch"``: the same with ``synchronized=True``: statistics over the global batch
  of all replicas under a tf.distribute strategy.
- ``"layer"``: LayerNormalization over the channel axis of each sample (and each position
  for conv features, as ConvNeXt does). Independent of batch size (SEEDS §6).
- ``"group"``: GroupNormalization; `groups` defaults to gcd(channels, 32), so it always
  divides the channels. ``groups=1`` normalizes over all of (H, W, C) of a sample.

Usage::

    layer = make_norm("batch", channels=64, name="block1_bn", norm_kwargs={"momentum": 0.9})
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from keras_bn._registry import Registry
from keras_bn._validation import check_float, check_positive_int

__all__ = ["BIAS_ABSORBING_NORMS", "NORMS", "NormSpec", "check_norm_kwargs", "make_norm", "norm_suffix",
           "resolve_norm"]


@dataclass(frozen=True)
class NormSpec:
    """What keras-bn knows about one normalization."""

    suffix: str  # layer-name suffix: block1_bn, block1_ln...
    options: tuple[str, ...] = ()  # what `norm_kwargs` may set
    absorbs_bias: bool = False  # subtracts a per-channel (or per-group) mean: a bias before it is redundant


_AFFINE = ("epsilon", "center", "scale")
NORMS: Registry[NormSpec] = Registry(
    "norm",
    {
        "none": NormSpec(""),
        "batch": NormSpec("bn", ("momentum", *_AFFINE), absorbs_bias=True),
        "layer": NormSpec("ln", _AFFINE),
        "group": NormSpec("gn", ("groups", *_AFFINE), absorbs_bias=True),
        "sync_batch": NormSpec("syncbn", ("momentum", *_AFFINE), absorbs_bias=True),
    },
    aliases={
        "bn": "batch",
        "batchnorm": "batch",
        "batch_norm": "batch",
        "ln": "layer",
        "layernorm": "layer",
        "layer_norm": "layer",
        "gn": "group",
        "groupnorm": "group",
        "group_norm": "group",
        "syncbn": "sync_batch",
        "sync_bn": "sync_batch",
    },
)

# Norms that subtract a per-channel (or per-group) mean, making the linear layer's bias redundant.
BIAS_ABSORBING_NORMS = tuple(name for name in NORMS.names() if NORMS.get(name).absorbs_bias)


def resolve_norm(norm: object) -> str:
    """Canonical norm name; None means ``"none"``."""
    if norm is None:
        return "none"
    return NORMS.canonical(norm)


def check_norm_kwargs(norm: str, norm_kwargs: dict | None, channels: int | None = None) -> dict:
    """Validate `norm_kwargs` for `norm` (and `groups` against `channels`); return a copy."""
    kwargs = dict(norm_kwargs or {})
    allowed = NORMS.get(norm).options
    for key in kwargs:
        if key not in allowed:
            listed = ", ".join(repr(a) for a in allowed) or "none"
            raise ValueError(
                f"`norm_kwargs` has an option that norm {norm!r} does not take: {key!r}. "
                f"Allowed: {listed}. Received: norm_kwargs={norm_kwargs!r}"
            )
    for flag in ("center", "scale"):
        if flag in kwargs and not isinstance(kwargs[flag], bool):
            raise TypeError(
                f"`norm_kwargs` option {flag!r} must be True or False. Received: norm_kwargs={norm_kwargs!r}"
            )
    if "momentum" in kwargs:
        check_float("momentum", kwargs["momentum"], low=0.0, high=1.0, high_inclusive=False)
    if "epsilon" in kwargs:
        check_float("epsilon", kwargs["epsilon"], low=0.0, low_inclusive=False)
    if "groups" in kwargs:
        groups = check_positive_int("groups", kwargs["groups"])
        if channels is not None and channels % groups:
            raise ValueError(
                f"`groups` must divide the number of channels ({channels}). "
                f"Received: groups={groups}"
            )
    return kwargs


def make_norm(
    norm: object,
    *,
    channels: int,
    name: str | None = None,
    channel_axis: int = -1,
    norm_kwargs: dict | None = None,
    gamma_initializer=None,
) -> keras.layers.Layer | None:
    """The Keras normalization layer for `norm`, or None for ``"none"``.

    `gamma_initializer` (e.g. ``"zeros"`` for a zero-init residual branch) overrides gamma's
    default of ones.
    """
    norm = resolve_norm(norm)
    kwargs = check_norm_kwargs(norm, norm_kwargs, channels)
    if norm == "none":
        return None
    if gamma_initializer is not None:
        kwargs["gamma_initializer"] = gamma_initializer
    if norm == "sync_batch" and keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"`norm='sync_batch'` (BatchNormalization(synchronized=True)) is a tf.distribute feature: it needs "
            f"the TensorFlow backend. On {keras.backend.backend()}, use norm='batch' (under keras.distribution "
            f"the batch is one global array, so its statistics are the global batch's). Received: norm={norm!r}")
    if norm in ("batch", "sync_batch"):
        return keras.layers.BatchNormalization(
            axis=channel_axis, synchronized=norm == "sync_batch", name=name, **kwargs
        )
    if norm == "layer":
        return keras.layers.LayerNormalization(axis=channel_axis, name=name, **kwargs)
    kwargs.setdefault("groups", math.gcd(channels, 32))
    return keras.layers.GroupNormalization(axis=channel_axis, name=name, **kwargs)


def norm_suffix(norm: object) -> str:
    """The short layer-name suffix of `norm`: bn, ln, gn, syncbn ("" for none)."""
    return NORMS.get(resolve_norm(norm)).suffix
