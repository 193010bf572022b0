"""Peak memory (RSS high-water mark) of training with and without the diagnostics callbacks.

Each case runs in a fresh process (``ru_maxrss`` only grows, and TensorFlow's allocations are
invisible to tracemalloc). Models:

- ``mlp50m``: ``build_dense((3072,), [4096, 4096, 4096], 10)`` with BN (46.2M parameters), a
  512-sample probe; its activations are small next to its weights and Adam state.
- ``wide``: 12 elementwise activation layers on a (128, 512) input, 512-sample probe: every
  watched output is 134 MB, so holding them all at once would cost 1.6 GB. The streamed
  probe (``max_probe_mb``, default 256) keeps this bounded.

Baseline: the same ``fit`` (same steps, same data) with no callbacks. Printed: peak RSS of
each, and the ratio diagnostics / baseline.

Usage::

    python benchmarks/bench_memory.py            # both models
    python benchmarks/bench_memory.py mlp50m
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile

CASES = ("mlp50m", "wide")


def child(model_name: str, with_callbacks: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    import keras_bn
    from keras_bn import callbacks as kbc

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if model_name == "mlp50m":
        model = keras_bn.build_dense((3072,), [4096, 4096, 4096], 10, norm="batch")
        x = rng.normal(size=(1024, 3072)).astype("float32")
        batch = 128
    else:
        inputs = keras.Input((128, 512))
        h = inputs
        for k in range(12):
            h = keras.layers.Activation("tanh" if k % 2 else "relu", name=f"act{k}")(h)
            h = keras.layers.Rescaling(1.01, name=f"scale{k}")(h)
        h = keras.layers.GlobalAveragePooling1D()(h)
        model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="out")(h))
        x = rng.normal(size=(512, 128, 512)).astype("float32")
        batch = 64
    y = np.arange(len(x)) % 10
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    callbacks = []
    if with_callbacks:
        callbacks = kbc.diagnostics(tempfile.mkdtemp(prefix="bench_memory_"), probe=x[:512], every=4, figures=False)
    model.fit(x, y, batch_size=batch, epochs=1, steps_per_epoch=8, verbose=0, callbacks=callbacks)
    params = model.count_params()
    print(f"{params} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


def measure(model_name: str, with_callbacks: bool) -> tuple[int, float]:
    out = subprocess.run([sys.executable, __file__, "--child", model_name, str(int(with_callbacks))],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[-2]), float(out[-1])


def main(cases) -> None:
    print("model    params   baseline fit (no callbacks)   with diagnostics(probe=512)   ratio")
    for name in cases:
        params, base = measure(name, False)
        _, diag = measure(name, True)
        print(f"{name:8s} {params / 1e6:5.1f}M   {base:8.0f} MB peak RSS              {diag:8.0f} MB peak RSS"
              f"          {diag / base:.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3] == "1")
    else:
        main(sys.argv[1:] or CASES)
