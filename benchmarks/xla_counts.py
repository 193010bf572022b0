"""XLA opcode counts of a model's inference program: how the folding tests and benchmarks see
what XLA is left to do (XLA fuses inference BatchNormalization by itself).

Usage (from benchmarks/, or with benchmarks/ on sys.path)::

    from xla_counts import xla_opcode_counts
    before, after = xla_opcode_counts(model, x), xla_opcode_counts(keras_bn.fold_batchnorm(model), x)
"""

from __future__ import annotations

import collections
import re

__all__ = ["xla_opcode_counts"]


def xla_opcode_counts(model, x) -> collections.Counter:
    """Opcode counts of the XLA-optimized HLO of ``model(x, training=False)`` (CPU or GPU).

    How to check that folding leaves XLA less to do (XLA fuses inference BN by itself)::

        before, after = xla_opcode_counts(model, x), xla_opcode_counts(keras_bn.fold_batchnorm(model), x)
    """
    import tensorflow as tf

    fn = tf.function(lambda t: model(t, training=False), jit_compile=True)
    hlo = fn.experimental_get_compiler_ir(tf.constant(x))(stage="optimized_hlo")
    return collections.Counter(re.findall(r"^\s*(?:ROOT )?%\S+ = \S+ ([a-z-]+)\(", hlo, re.M))


