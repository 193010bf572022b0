"""Adam with named presets, one of which states each way Keras can clip gradients.

Keras has two norm clippings that are easy to mix up (keras#13575, tensorflow#36001):

- ``clipnorm=c`` clips **each variable's gradient on its own**: a kernel whose gradient norm
  is 5 is scaled to norm ``c`` while a bias with norm 0.1 is left alone, so the direction of
  the whole update changes.
- ``global_clipnorm=c`` clips **the global norm** of all gradients together (the norm of the
  concatenation, as ``tf.clip_by_global_norm``): every gradient is scaled by the same factor,
  so the update keeps its direction. This is what papers on RNNs mean by "clip the norm".

Keras refuses both at once (and either with ``clipvalue``). Under a tf.distribute strategy
Keras clips each replica's share before summing the shares; an optimizer made by `adam` inside
a strategy scope clips the sum instead, i.e. the global batch's gradient
(`keras_bn.distribute.clip_after_aggregation`). Each `Preset` says which it does
and which recipe's measurement backs its values (None: taken from the source notes as is).

Usage::

    opt = keras_bn.optimizers.adam("rnn")                      # Adam(1e-4, clipnorm=1.0)
    opt = keras_bn.optimizers.adam("global_clip", learning_rate=3e-4)
    opt = keras_bn.optimizers.adam(weight_decay=1e-4)          # -> keras.optimizers.AdamW
    keras_bn.optimizers.list_presets()                         # the names
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import keras

from keras_bn._registry import Registry
from keras_bn._validation import check_float

__all__ = ["CLIPPINGS", "PRESETS", "Preset", "adam", "clipping_of", "get_preset", "list_presets"]

CLIPPINGS = ("none", "per_variable", "global")


@dataclass(frozen=True)
class Preset:
    """One named Adam setting.

    Attributes:
        name: the preset's name.
        description: one line on what it is for.
        kwargs: the keyword arguments given to ``keras.optimizers.Adam`` (read-only).
        clipping: "none", "per_variable" (``clipnorm``) or "global" (``global_clipnorm``).
        recipe: the recipe whose measurement backs the values, or None when they come from
            the source notes (SEEDS.md) unmeasured here.
    """

    name: str
    description: str
    kwargs: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    clipping: str = "none"
    recipe: str | None = None


def _preset(name, description, clipping="none", recipe=None, **kwargs) -> Preset:
    return Preset(name, description, MappingProxyType(kwargs), clipping, recipe)


PRESETS: Registry[Preset] = Registry(
    "preset",
    {
        p.name: p
        for p in (
            _preset("default", "Keras' Adam defaults (learning rate 1e-3), no clipping.",
                    recipe="bn_vs_no_bn", learning_rate=1e-3),
            _preset("clip_per_variable",
                    "Adam(1e-3) clipping each variable's gradient to norm 1 on its own (clipnorm).",
                    clipping="per_variable", learning_rate=1e-3, clipnorm=1.0),
            _preset("global_clip",
                    "Adam(1e-3) scaling all gradients together to a global norm of at most 1 "
                    "(global_clipnorm).",
                    clipping="global", learning_rate=1e-3, global_clipnorm=1.0),
            _preset("rnn", "The notes' setting for exploding gradients in RNNs: Adam(1e-4) with "
                    "per-variable clipnorm=1.0 (SEEDS §1).",
                    clipping="per_variable", learning_rate=1e-4, clipnorm=1.0),
            _preset("bn_high_lr", "Adam(1e-2), no clipping: a learning rate BatchNorm networks "
                    "tolerate (the LR finder's suggestion for the BN MLP is about 10x that of the "
                    "plain one).",
                    recipe="lr_finder", learning_rate=1e-2),
        )
    },
    aliases={"clipnorm": "clip_per_variable", "global_clipnorm": "global_clip"},
)


def list_presets() -> list[str]:
    """The preset names, e.g. ``["default", "clip_per_variable", ...]``."""
    return PRESETS.names()


def get_preset(name: str) -> Preset:
    """The `Preset` called `name`; ValueError listing the presets when unknown.

    Usage: ``keras_bn.optimizers.get_preset("rnn").clipping  # "per_variable"``
    """
    return PRESETS.get(name)


def adam(preset: str = "default", **overrides) -> keras.optimizers.Optimizer:
    """A new ``keras.optimizers.Adam`` from a preset, with `overrides` merged last.

    Overrides are any ``Adam`` keyword: ``learning_rate`` may be a float or a
    ``keras.optimizers.schedules.LearningRateSchedule``. Setting one clipping replaces the
    preset's (``adam("rnn", global_clipnorm=1.0)`` clips the global norm only); pass
    ``clipnorm=None`` to drop it. A ``weight_decay`` override returns
    ``keras.optimizers.AdamW`` (decoupled weight decay) instead.

    Usage::

        opt = adam("clip_per_variable", learning_rate=keras.optimizers.schedules.ExponentialDecay(1e-3, 1000, 0.9))
    """
    kwargs = dict(get_preset(preset).kwargs)
    clip_keys = ("clipnorm", "global_clipnorm", "clipvalue")
    if any(k in overrides for k in clip_keys):
        kwargs = {k: v for k, v in kwargs.items() if k not in clip_keys}
    kwargs.update(overrides)
    lr = kwargs.get("learning_rate")
    if not isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) and not callable(lr):
        kwargs["learning_rate"] = check_float("learning_rate", lr, low=0.0, low_inclusive=False)
    weight_decay = kwargs.pop("weight_decay", None)
    if weight_decay is not None:
        kwargs["weight_decay"] = check_float("weight_decay", weight_decay, low=0.0)
        optimizer = keras.optimizers.AdamW(**kwargs)
    else:
        optimizer = keras.optimizers.Adam(**kwargs)
    if any(kwargs.get(k) for k in clip_keys):
        # Inside a strategy scope: clip the cross-replica sum (the global batch's gradient),
        # not each replica's share as Keras does (tensorflow#33929). No-op without a strategy.
        from keras_bn.distribute import clip_after_aggregation

        clip_after_aggregation(optimizer)
    return optimizer


def clipping_of(optimizer: keras.optimizers.Optimizer) -> str:
    """Which clipping an optimizer does: "none", "per_variable", "global" or "value".

    Usage: ``clipping_of(adam("global_clip"))  # "global"``
    """
    if optimizer.global_clipnorm:
        return "global"
    if optimizer.clipnorm:
        return "per_variable"
    if optimizer.clipvalue:
        return "value"
    return "none"
