"""What `keras_bn.fold_batchnorm` may fold: the layer kinds, the fusable activations, the checks
that say why a BN stays, and the folded weights (NumPy, float64).

Folding is exact only where inference-mode BN is a per-channel affine map of the producing
layer's output channels (SEEDS §5); every rule here returns the reason when it is not.

Usage (inside keras-bn)::

    reason = why_not_foldable(bn, producer, consumers, outputs, node_counts, tensor)
    weights = folded_weights(producer, bn)
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["FOLDABLE_LAYERS", "FUSABLE_ACTIVATIONS", "folded_weights", "fused_activation_name", "why_not_foldable"]

# Exact types only: a subclass may change what `call` does with the kernel.
_KERNEL_LAST = (  # kernel (..., in, out): the output channel is the last kernel axis
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)
_KERNEL_TRANSPOSE = (  # kernel (..., out, in)
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)  # kernel (..., in, mult)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)  # pointwise (..., in*m, out)
FOLDABLE_LAYERS = _KERNEL_LAST + _KERNEL_TRANSPOSE + _DEPTHWISE + _SEPARABLE

# Element-wise activations that can move into the folded layer's `activation` unchanged.
FUSABLE_ACTIVATIONS = frozenset({
    "softmax", "log_softmax",  # along the last axis in both places: a layer's activation sees its whole output
    "celu", "elu", "exponential", "gelu", "hard_shrink", "hard_sigmoid", "hard_silu",
    "hard_swish", "hard_tanh", "leaky_relu", "log_sigmoid", "mish", "relu", "relu6", "selu",
    "sigmoid", "silu", "soft_shrink", "softplus", "softsign", "sparse_plus", "sparse_sigmoid",
    "squareplus", "swish", "tanh", "tanh_shrink",
})



def _output_channel_axis(layer) -> int:
    if isinstance(layer, keras.layers.Dense):
        return -1
    return 1 if layer.data_format == "channels_first" else -1


def fused_activation_name(layer, dtype_name: str) -> str | None:
    """The activation name to move into the folded layer, or None if `layer` can't be fused."""
    if type(layer) not in (keras.layers.ReLU, keras.layers.Activation) or layer.dtype_policy.name != dtype_name:
        return None
    if type(layer) is keras.layers.ReLU:
        if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            return None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else None
    name = keras.activations.serialize(layer.activation)
    return name if isinstance(name, str) and name in FUSABLE_ACTIVATIONS else None


def why_not_foldable(bn, producer, consumers, outputs, node_counts, tensor) -> str | None:
    """None if `bn` can be folded into `producer`, else the reason (one phrase)."""
    if producer is None:
        return "follows a model input"
    kind = type(producer).__name__
    if isinstance(producer, keras.Model):
        return f"follows the nested model {producer.name!r} (folds do not cross model boundaries)"
    if type(producer) not in FOLDABLE_LAYERS:
        hint = " (BN after an activation is not a per-channel affine map of a kernel)" if isinstance(
            producer, (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                       keras.layers.PReLU, keras.layers.ELU)) else ""
        return f"follows {producer.name!r} ({kind}), not a Dense/Conv layer{hint}"
    if getattr(producer, "quantization_mode", None) or getattr(producer, "lora_enabled", False):
        return f"follows {producer.name!r}, which is quantized or uses LoRA"
    act = keras.activations.serialize(producer.activation)
    if act != "linear":
        return f"follows {producer.name!r}, which applies activation {act!r} before the BN"
    if node_counts[id(producer)] > 1:
        return f"{producer.name!r} is shared (called {node_counts[id(producer)]} times)"
    if node_counts[id(bn)] > 1:
        return f"the BN layer is shared (called {node_counts[id(bn)]} times)"
    if len(consumers[id(tensor)]) > 1 or id(tensor) in outputs:
        return f"the output of {producer.name!r} has other consumers besides this BN"
    rank = bn.input_spec.ndim
    if bn.axis % rank != _output_channel_axis(producer) % rank:
        return (f"BN axis {bn.axis} is not the channel axis of {producer.name!r} "
                f"({_output_channel_axis(producer) % rank} of rank {rank})")
    if _bias_add_hazard(producer, bn):
        return (f"{producer.name!r} is channels_first and its last spatial size equals (or may "
                f"equal) its channel count: Keras' TensorFlow ops.add would then add the folded "
                f"bias on the wrong axis")
    return None


def _bias_add_hazard(producer, bn) -> bool:
    """True where keras.ops.add (TF backend) would broadcast a (1, C, 1...) bias wrongly.

    Keras 3's TF `add` turns ``x + bias`` into ``tf.nn.bias_add`` and picks NHWC whenever
    ``x.shape[-1] == C``, even for a channels_first bias; a folded channels_first layer must
    therefore not get a bias when its last spatial size is C or unknown.
    """
    if keras.backend.backend() != "tensorflow" or _output_channel_axis(producer) != 1:
        return False
    shape = (bn.get_build_config() or {}).get("input_shape") or ()
    if len(shape) < 3:
        return False
    return shape[-1] is None or shape[-1] == shape[1]


def folded_weights(layer, bn) -> list[np.ndarray]:
    """The weights of `layer` with `bn` (inference mode) folded in; bias always present."""
    eps = float(bn.epsilon)
    mean = np.asarray(bn.moving_mean, dtype=np.float64)
    var = np.asarray(bn.moving_variance, dtype=np.float64)
    gamma = np.asarray(bn.gamma, dtype=np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta, dtype=np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + eps)

    weights = [np.asarray(w) for w in layer.get_weights()]
    dtypes = [w.dtype for w in weights]
    k = 1 if isinstance(layer, _SEPARABLE) else 0  # separable: scale the pointwise kernel
    kernel = weights[k].astype(np.float64)
    if isinstance(layer, _KERNEL_TRANSPOSE):
        kernel = kernel * scale[:, None]
    elif isinstance(layer, _DEPTHWISE):
        kernel = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        kernel = kernel * scale
    bias = weights[k + 1].astype(np.float64) if layer.use_bias else np.zeros_like(mean)
    bias = beta + (bias - mean) * scale
    out = weights[:k] + [kernel.astype(dtypes[k]), bias.astype(dtypes[k])]
    return out
