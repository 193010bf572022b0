"""The floor of the gradient tap's per-step work on JAX: formulations of a pass over the gradients.

A pure-JAX Adam step of the 784-32-32-10 MLP at batch 32 (the shapes of `bench_jax.py`'s model
without its BatchNorm), jitted with its state donated, run alone in a loop (no ``fit``, no
callbacks): ``bare`` against the same step plus one formulation of the tap's per-variable sums
of squares (written into a state array, as `GradientTap.record` does). ``keras_bn`` is the
tap's own `_sumsq_per_variable`; the others are the alternatives tried for issue 22, and
``big_kernel_only`` (one reduction of the 784x32 kernel's gradient) and ``state_only`` (the
array updated, no pass over the gradients) bound what any formulation can cost;
``passed_through``: the array returned unchanged (what a tap that computes nothing measures). Prints each
variant's wall and process CPU per step over ``bare`` (medians of alternating rounds) and the
largest relative error of its sums against NumPy in float64.

Usage::

    python benchmarks/bench_jax_tap_floor.py              # 12 rounds of 500 steps: about 1 minute
    python benchmarks/bench_jax_tap_floor.py --rounds 4   # quicker, noisier
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from keras_bn.callbacks._gradient_tap import _sumsq_per_variable  # noqa: E402

SHAPES = [(784, 32), (32,), (32, 32), (32,), (32, 10), (10,)]


def _keras_bn(grads):
    return _sumsq_per_variable(dict(enumerate(grads)), len(grads))


def _one_sum_per_variable(grads):
    return jnp.stack([jnp.sum(jnp.square(g)) for g in grads])


def _vdot(grads):
    return jnp.stack([jnp.vdot(g.reshape(-1), g.reshape(-1)) for g in grads])


def _global_only(grads):
    total = sum(jnp.sum(jnp.square(g)) for g in grads)
    return jnp.stack([total] * len(grads))


def _big_kernel_only(grads):
    return jnp.stack([jnp.sum(jnp.square(grads[0]))] * len(grads))


def _rows(g, width=128):
    flat = g.reshape(-1)
    count = -(-flat.shape[0] // width)
    return jnp.pad(flat, (0, count * width - flat.shape[0])).reshape(count, width)


def _lanes_per_variable(grads):
    """Each gradient as rows of 128 summed down its rows first (128 lanes, SIMD), then across."""
    return jnp.stack([jnp.sum(jnp.sum(jnp.square(_rows(g)), axis=0)) for g in grads])


def _lanes_segment_sum(grads):
    """All rows concatenated, summed per variable down the rows (segment_sum of whole rows)."""
    rows = [_rows(g) for g in grads]
    segments = np.concatenate([np.full(r.shape[0], i, np.int32) for i, r in enumerate(rows)])
    lanes = jax.ops.segment_sum(jnp.square(jnp.concatenate(rows)), segments, num_segments=len(grads))
    return jnp.sum(lanes, axis=1)


def _state_only(grads):
    return jnp.ones(len(grads), jnp.float32)


def _passed_through(grads):
    return None  # `make_step`: the state array returned as it came


VARIANTS = {"bare": None, "keras_bn": _keras_bn, "one_sum_per_variable": _one_sum_per_variable, "vdot": _vdot,
            "lanes_per_variable": _lanes_per_variable, "lanes_segment_sum": _lanes_segment_sum,
            "global_only": _global_only, "big_kernel_only": _big_kernel_only, "state_only": _state_only,
            "passed_through": _passed_through}


def _loss(params, x, y):
    h = jax.nn.relu(x @ params[0] + params[1])
    h = jax.nn.relu(h @ params[2] + params[3])
    logits = h @ params[4] + params[5]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), y])


def make_step(sums):
    """A jitted Adam(1e-3) step; with `sums`, it also keeps them and the running peak of their
    total in `stats` (``bare`` carries no `stats`, as Keras' own step carries no tap array)."""
    def step(params, m, v, t, stats, x, y):
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        s = sums(grads) if sums is not None else None
        if s is not None:
            total = jnp.sum(s)
            peak = jnp.where(jnp.isfinite(total), jnp.maximum(stats[-1], total), stats[-1])
            stats = jnp.concatenate([s, peak[None]])
        t = t + 1
        m = [0.9 * a + 0.1 * g for a, g in zip(m, grads)]
        v = [0.999 * a + 0.001 * g * g for a, g in zip(v, grads)]
        lr = 1e-3 * jnp.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        params = [p - lr * a / (jnp.sqrt(b) + 1e-7) for p, a, b in zip(params, m, v)]
        return params, m, v, t, stats, loss
    if sums is None:
        bare = jax.jit(lambda params, m, v, t, x, y: step(params, m, v, t, None, x, y), donate_argnums=(0, 1, 2))
        return lambda params, m, v, t, stats, x, y: bare(params, m, v, t, x, y)
    return jax.jit(step, donate_argnums=(0, 1, 2, 4))


def time_variant(name, params, x, y, steps):
    step = make_step(VARIANTS[name])
    state = ([p.copy() for p in params], [jnp.zeros_like(p) for p in params], [jnp.zeros_like(p) for p in params],
             jnp.zeros((), jnp.float32), jnp.zeros(len(params) + 1, jnp.float32))
    for _ in range(20):  # compile and warm up
        *state, loss = step(*state, x, y)
    loss.block_until_ready()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        *state, loss = step(*state, x, y)
    loss.block_until_ready()
    return (time.perf_counter() - wall) / steps * 1e6, (time.process_time() - cpu) / steps * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    params = [jnp.asarray(rng.normal(size=s).astype(np.float32) * 0.05) for s in SHAPES]
    x, y = jnp.asarray(rng.random((32, 784), dtype=np.float32)), jnp.asarray(rng.integers(0, 10, 32))
    names = list(VARIANTS)
    times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # alternating, rotating order
            times[name].append(time_variant(name, params, x, y, args.steps))
    grads = jax.grad(_loss)(params, x, y)
    reference = np.array([np.sum(np.square(np.asarray(g, np.float64))) for g in grads])
    bare = times["bare"]
    print(f"jax {jax.__version__}, pure-JAX Adam step of the 784-32-32-10 MLP at batch 32, "
          f"{args.rounds} rounds of {args.steps} steps; bare {statistics.median(t[0] for t in bare):.1f} us wall / "
          f"{statistics.median(t[1] for t in bare):.1f} us CPU per step")
    for name in names[1:]:
        extra_wall = statistics.median(t[0] - b[0] for t, b in zip(times[name], bare))
        extra_cpu = statistics.median(t[1] - b[1] for t, b in zip(times[name], bare))
        ratio = statistics.median(t[0] / b[0] for t, b in zip(times[name], bare))
        line = f"  {name:22s} wall {ratio:.3f}x ({extra_wall:+5.1f} us)   CPU {extra_cpu:+5.1f} us per step"
        if name not in ("state_only", "passed_through", "big_kernel_only", "global_only"):
            got = np.asarray(jax.jit(VARIANTS[name])(grads), np.float64)
            line += f"   max rel. error vs NumPy {np.max(np.abs(got - reference) / reference):.1e}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
