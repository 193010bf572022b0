"""Wall time of every recipe's ``--quick`` mode and of ``keras-bn --help`` / ``list``.

Each command runs in a fresh process (start-up included, as a user sees it) on the embedded
``fashion_mnist_small``, logging to a temporary folder. Baseline, measured in the same run: a
bare ``python -c "import keras"`` (the start-up no recipe can avoid). Printed per command: the
wall seconds, the ratio to the 15 s target of issue 17 and to the baseline, and the load
average before and after (the machine is shared: note it with the figures), and the CPU
seconds (user + system) of the process: on a machine shared by many, wall time grows with the
load while CPU time barely does, so it is the figure that says what a quiet 2-core machine takes.

Usage::

    nice python benchmarks/bench_quick_modes.py                 # every recipe
    python benchmarks/bench_quick_modes.py bn_vs_no_bn init_study --repeats 3
    python benchmarks/bench_quick_modes.py --cli-only --repeats 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from keras_bn.recipes import RECIPES  # names only: imports no TensorFlow

TARGET_SECONDS = 15.0
CLI_TARGET_SECONDS = 1.0


SHOWN: dict[str, str] = {}  # recipe -> the last "What this run shows" paragraph it printed
CPU: dict[str, list[float]] = {}  # command -> CPU seconds (user + system) of each run


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(argv: list[str]) -> float:
    """Seconds one fresh process takes to run `argv` (its CPU seconds go to `CPU`); raises when it fails."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    CPU.setdefault(" ".join(argv), []).append(_children_cpu() - cpu)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-1500:]}")
    lines = done.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("What this run shows")]
    if starts:
        end = next((j for j in range(starts[-1], len(lines)) if ": done in " in lines[j]), len(lines))
        SHOWN[" ".join(argv)] = " ".join(lines[starts[-1]:end])
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=list(RECIPES), help="recipes to time (default: every recipe)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per command; the median is printed (default 1)")
    parser.add_argument("--cli-only", action="store_true", help="only `keras-bn --help` and `list`")
    args = parser.parse_args(argv)
    python = sys.executable
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")

    def median(command):
        return statistics.median(wall(command) for _ in range(args.repeats))

    def cpu(command):
        return statistics.median(CPU[" ".join(command)])

    keras_only = [python, "-c", "import keras"]
    baseline = median(keras_only)
    print(f"baseline `python -c 'import keras'`: {baseline:.2f} s wall, {cpu(keras_only):.2f} s CPU")
    rows = []
    for words in (["--help"], ["list"]):
        command = [python, "-m", "keras_bn.cli", *words]
        seconds = median(command)
        rows.append((f"keras-bn {' '.join(words)}", seconds, seconds / CLI_TARGET_SECONDS, cpu(command)))
    with tempfile.TemporaryDirectory() as log_dir:
        for recipe in [] if args.cli_only else args.recipes:
            command = [python, "-m", "keras_bn.cli", "run", recipe, "--quick", "--dataset", "fashion_mnist_small",
                       "--log-dir", log_dir]
            seconds = median(command)
            rows.append((f"run {recipe} --quick", seconds, seconds / TARGET_SECONDS, cpu(command)))
            print(f"  {recipe}: {seconds:.1f} s wall, {cpu(command):.1f} s CPU, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n| command | wall s (median of {args.repeats}) | / target | / baseline | CPU s | CPU / target |")
    print("|---|---|---|---|---|---|")
    for name, seconds, to_target, cpu_seconds in rows:
        target = CLI_TARGET_SECONDS if name.startswith("keras-bn") else TARGET_SECONDS
        print(f"| {name} | {seconds:.2f} | {to_target:.2f} | {seconds / baseline:.3f} | {cpu_seconds:.2f} | "
              f"{cpu_seconds / target:.2f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (1 min)")
    for command, paragraph in SHOWN.items():
        print(f"\n{command.split(' run ')[-1]}:\n  {paragraph}")


if __name__ == "__main__":
    main()
