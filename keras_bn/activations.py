"""Activation registry: every activation of the classic comparison as a Keras layer.

Each entry knows its family (`FAMILY_STATISTICS`: which statistics the diagnostics log,
dead units for the ReLU family, saturation for sigmoid/tanh, see docs/activations.md) and
its default initializer (``initializer="auto"``):
He for the ReLU family, Glorot for sigmoid/tanh, LeCun normal for SELU (SEEDS §2, §4).
Anything else Keras knows by name, or any callable, is accepted too.

Usage::

    layer = make_activation("leaky_relu", name="block1_leaky_relu", act_kwargs={"negative_slope": 0.1})
    default_initializer("selu")  # -> "lecun_normal"
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from keras_bn._registry import Registry
from keras_bn._validation import check_positive_int

__all__ = [
    "ACTIVATIONS",
    "FAMILY_STATISTICS",
    "KERAS_FAMILIES",
    "NEAR_ZERO",
    "OUTPUT_RANGE",
    "SATURATION_THRESHOLD",
    "ActivationSpec",
    "Maxout",
    "activation_family",
    "activation_name",
    "check_act_kwargs",
    "default_initializer",
    "family_of",
    "make_activation",
    "resolve_activation",
    "saturation_band",
    "width_multiplier",
]


@keras.saving.register_keras_serializable(package="keras_bn")
class Maxout(keras.layers.Layer):
    """Maxout: the max over `num_pieces` linear pieces (Goodfellow et al., 2013).

    The preceding linear layer produces ``units * num_pieces`` features; Maxout splits the
    `axis` into groups of `num_pieces` consecutive features and keeps each group's maximum,
    so the output has ``units`` features. Twice the parameters of a ReLU layer at k=2.

    Args:
        num_pieces: how many linear pieces each output unit takes the max over (k >= 2).
        axis: the feature axis (-1 for channels-last, 1 for channels-first).

    Example::

        x = keras.layers.Dense(64 * 2)(inputs)
        y = keras_bn.Maxout(num_pieces=2)(x)  # 64 features
    """

    def __init__(self, num_pieces: int = 2, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.num_pieces = check_positive_int("num_pieces", num_pieces)
        if self.num_pieces < 2:
            raise ValueError(f"`num_pieces` must be >= 2. Received: num_pieces={num_pieces!r}")
        from keras_bn._validation import check_int  # local: this module's imports belong to its owner

        self.axis = check_int("axis", axis)

    def _axis(self, rank: int) -> int:
        return self.axis % rank

    def build(self, input_shape):
        axis = self._axis(len(input_shape))
        channels = input_shape[axis]
        if channels is not None and channels % self.num_pieces:
            raise ValueError(
                f"Maxout needs the feature axis to be a multiple of `num_pieces`; "
                f"{channels} features do not split into groups of {self.num_pieces}. "
                f"Received: num_pieces={self.num_pieces}"
            )
        super().build(input_shape)

    def call(self, inputs):
        rank = len(inputs.shape)
        axis = self._axis(rank)
        x = keras.ops.moveaxis(inputs, axis, -1) if axis != rank - 1 else inputs
        channels = x.shape[-1]
        pieces = keras.ops.reshape(
            x, tuple(keras.ops.shape(x)[:-1]) + (channels // self.num_pieces, self.num_pieces)
        )
        out = keras.ops.max(pieces, axis=-1)
        return keras.ops.moveaxis(out, -1, axis) if axis != rank - 1 else out

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        axis = self._axis(len(shape))
        if shape[axis] is not None:
            shape[axis] //= self.num_pieces
        return tuple(shape)

    def get_config(self):
        return {**super().get_config(), "num_pieces": self.num_pieces, "axis": self.axis}


# --- families: what the activation statistics measure --------------------------------------
# One vocabulary for the registry, the diagnostics and the recipes. A family says which
# statistics a layer's outputs get besides mean, std and histogram (docs/activations.md):
#   "relu":    can output exactly its floor for every sample: dead-unit and zero fractions;
#   "smooth":  GELU / SiLU / ELU-like, no hard floor: the near-zero fraction (|y| <= near_zero);
#   "tanh":    bounded in (-1, 1): saturation;  "sigmoid": bounded in (0, 1): saturation.
FAMILY_STATISTICS: dict[str, tuple[str, ...]] = {
    "relu": ("dead_fraction", "zero_fraction"),
    "smooth": ("near_zero_fraction",),
    "tanh": ("saturation",),
    "sigmoid": ("saturation",),
}
OUTPUT_RANGE = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}

# A bounded activation is saturated where its output lies in the outer (1 - t) / 2 of its range
# at either end: |y| > t for tanh, |2y - 1| > t for sigmoid. Since sigmoid(x) = (1 + tanh(x/2)) / 2
# this is the same point of both curves, where the slope has fallen to 1 - t^2 of its peak
# (5.9 % at t = 0.97), so tanh and sigmoid layers are compared on one scale.
SATURATION_THRESHOLD = 0.97
# fastai's ActivationStats threshold for "near zero".
NEAR_ZERO = 0.05


def saturation_band(family: str, threshold: float = SATURATION_THRESHOLD) -> tuple[float, float]:
    """``(low, high)``: outputs of a bounded `family` outside it are saturated.

    Example::

        saturation_band("sigmoid")  # -> (0.015, 0.985)
    """
    if family not in OUTPUT_RANGE:
        raise ValueError(
            f"`family` must be a bounded family, one of {sorted(OUTPUT_RANGE)}. Received: family={family!r}"
        )
    low, high = OUTPUT_RANGE[family]
    margin = (1.0 - threshold) / 2.0 * (high - low)
    return low + margin, high - margin


@dataclass(frozen=True)
class ActivationSpec:
    """What keras-bn knows about one activation."""

    family: str | None  # a key of FAMILY_STATISTICS; None: not a nonlinearity (linear)
    default_initializer: str
    layer_kwargs: tuple[str, ...] = ()  # options that `act_kwargs` may set

    @property
    def is_relu_family(self) -> bool:
        return self.family == "relu"


ACTIVATIONS: Registry[ActivationSpec] = Registry(
    "activation",
    {
        "sigmoid": ActivationSpec("sigmoid", "glorot_uniform"),
        "tanh": ActivationSpec("tanh", "glorot_uniform"),
        "relu": ActivationSpec("relu", "he_normal"),
        "leaky_relu": ActivationSpec("relu", "he_normal", ("negative_slope",)),
        "prelu": ActivationSpec("relu", "he_normal", ("alpha_initializer", "shared_axes")),
        "elu": ActivationSpec("smooth", "he_normal"),
        "selu": ActivationSpec("smooth", "lecun_normal"),
        "gelu": ActivationSpec("smooth", "he_normal"),
        "maxout": ActivationSpec("relu", "he_normal", ("num_pieces",)),
        "linear": ActivationSpec(None, "glorot_uniform"),
    },
    aliases={"leakyrelu": "leaky_relu", "lrelu": "leaky_relu", "identity": "linear"},
)

# Families of the other Keras activation functions (by ``__name__``; "swish" is "silu"). Softmax,
# log-softmax and exponential outputs get no family: they are heads, not hidden activations.
KERAS_FAMILIES: dict[str, str] = {
    "relu6": "relu",
    "silu": "smooth", "softplus": "smooth", "mish": "smooth", "celu": "smooth",
    "hard_silu": "smooth", "sparse_plus": "smooth", "squareplus": "smooth",
    "hard_tanh": "tanh", "softsign": "tanh",
    "hard_sigmoid": "sigmoid",
}

# Leaky ReLU's slope in the source notes (Keras' own default is 0.3).
LEAKY_RELU_SLOPE = 0.01


def resolve_activation(activation: object) -> str | object:
    """Canonical name for a registered activation, the Keras name or callable otherwise.

    Raises ValueError listing the choices for an unknown string, TypeError for other types.
    """
    if callable(activation) and not isinstance(activation, str):
        return activation
    if not isinstance(activation, str):
        raise TypeError(
            "`activation` must be a name or a callable. "
            f"Received: activation={activation!r}"
        )
    name = ACTIVATIONS.lookup(activation)
    if name is not None:
        return name
    try:
        keras.activations.get(activation)
    except ValueError:
        raise ValueError(
            ACTIVATIONS.unknown_message(activation, extra=", or any name of keras.activations")
        ) from None
    return activation


def activation_name(activation: object) -> str:
    """A short name for layer names: ``"relu"``, ``"swish"``, or the callable's ``__name__``."""
    resolved = resolve_activation(activation)
    if isinstance(resolved, str):
        return resolved
    return getattr(resolved, "__name__", type(resolved).__name__).lower()


def default_initializer(activation: object) -> str:
    """The initializer ``"auto"`` picks for `activation` (He / Glorot / LeCun normal)."""
    resolved = resolve_activation(activation)
    if isinstance(resolved, str) and resolved in ACTIVATIONS:
        return ACTIVATIONS.get(resolved).default_initializer
    return "glorot_uniform"  # Keras' own default for anything else


def width_multiplier(activation: object, act_kwargs: dict | None = None) -> int:
    """How many linear outputs one unit of `activation` consumes (Maxout: num_pieces)."""
    if resolve_activation(activation) == "maxout":
        return int((act_kwargs or {}).get("num_pieces", 2))
    return 1


def check_act_kwargs(activation: object, act_kwargs: dict | None) -> dict:
    """Return `act_kwargs` as a dict, raising ValueError for an option `activation` lacks."""
    act_kwargs = dict(act_kwargs or {})
    resolved = resolve_activation(activation)
    allowed = ACTIVATIONS.get(resolved).layer_kwargs if resolved in ACTIVATIONS else ()
    for key in act_kwargs:
        if key not in allowed:
            listed = ", ".join(repr(a) for a in allowed) or "none"
            raise ValueError(
                f"`act_kwargs` has an option that activation {activation!r} does not take: "
                f"{key!r}. Allowed: {listed}. Received: act_kwargs={act_kwargs!r}"
            )
    if resolved == "maxout":
        pieces = check_positive_int("num_pieces", act_kwargs.get("num_pieces", 2))
        if pieces < 2:
            raise ValueError(f"`num_pieces` must be >= 2. Received: num_pieces={pieces!r}")
    if resolved == "leaky_relu" and "negative_slope" in act_kwargs:
        slope = act_kwargs["negative_slope"]
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or slope < 0:
            raise ValueError(
                f"`negative_slope` must be a number >= 0. Received: negative_slope={slope!r}"
            )
    return act_kwargs


def make_activation(
    activation: object,
    *,
    name: str | None = None,
    act_kwargs: dict | None = None,
    channel_axis: int = -1,
    rank: int = 1,
    dtype=None,
) -> keras.layers.Layer:
    """Build the Keras layer for `activation`.

    `rank` is the number of spatial axes (0 for dense features); PReLU then shares its slope
    over the spatial axes, one slope per channel.
    """
    resolved = resolve_activation(activation)
    act_kwargs = check_act_kwargs(activation, act_kwargs)
    common = {"name": name, "dtype": dtype}
    if resolved == "leaky_relu":
        return keras.layers.LeakyReLU(
            negative_slope=act_kwargs.get("negative_slope", LEAKY_RELU_SLOPE), **common
        )
    if resolved == "prelu":
        if "shared_axes" not in act_kwargs and rank > 0:
            channel = channel_axis % (rank + 1) + 1  # axes counted with the batch axis
            act_kwargs["shared_axes"] = [a for a in range(1, rank + 2) if a != channel]
        act_kwargs.setdefault("alpha_initializer", keras.initializers.Constant(0.25))
        return keras.layers.PReLU(**act_kwargs, **common)
    if resolved == "maxout":
        return Maxout(num_pieces=act_kwargs.get("num_pieces", 2), axis=channel_axis, **common)
    return keras.layers.Activation(resolved, **common)


def family_of(activation: object) -> str | None:
    """The family of an activation given by name or function (None: linear or unknown).

    Example::

        family_of("gelu"), family_of(keras.activations.swish)  # -> ("smooth", "smooth")
    """
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", "")
    canonical = ACTIVATIONS.lookup(name)
    if canonical is not None:
        return ACTIVATIONS.get(canonical).family
    fn = keras.activations.get(name) if isinstance(activation, str) and name else None
    return KERAS_FAMILIES.get(getattr(fn, "__name__", name))


def activation_family(layer: keras.layers.Layer) -> str | None:
    """The family of what `layer` outputs (a key of `FAMILY_STATISTICS`), or None.

    Recognises keras-bn's and Keras' activation layers, keras-bn's `DenseBlock` / `ConvBlock`
    (the family of their activation) and layers with a fused ``activation``
    (``Dense(..., activation="gelu")``), so diagnostics work on any model.
    """
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU, Maxout)):
        return "relu"
    if isinstance(layer, keras.layers.ELU):
        return "smooth"
    fn = getattr(layer, "activation", None)
    if fn is None or isinstance(layer, keras.Model):
        return None
    try:
        return family_of(fn)
    except ValueError:  # a string Keras does not know: not an activation we can classify
        return None
