"""Report scale (issue 16.10): read a run of 1M scalars in bounded memory and time.

Writes a diagnostics-like run (`--scalars` scalars: `--tags` per-layer tags per event), then reads
it in fresh processes and prints, for each reader, the peak RSS of the whole process
(``resource.getrusage``), what the imports alone take, and the wall time:

- ``keras_bn.events.read_run`` with the package imported as today (``keras_bn/__init__``
  imports Keras and so TensorFlow),
- ``keras_bn.events.read_run`` alone (the module without the package's ``__init__``: what a
  ``keras-bn report`` costs once the package import is lazy; TensorFlow-free),
- the baseline: TensorBoard's ``EventAccumulator``, as ``report.read_run`` did before
  (``--no-baseline`` skips it; at 1M scalars it takes ~1.5 GB).

Target: 1M scalars in <= 300 MB peak RSS of the whole process and <= 10 s.

Usage::

    python benchmarks/bench_report.py [--scalars 1000000] [--tags 50] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITE = """
import sys, time, numpy as np
from keras_bn import events, _keras_internals as internals
folder, scalars, tags = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
Event, Summary = internals.tensorboard_event_class(), internals.tensorboard_summary_class()
proto = internals.tensorboard_tensor_proto
metadata = internals.tensorboard_plugin_metadata("scalar")
writer = events.EventFileWriter(folder)
for step in range(1, scalars // tags + 1):
    summary = Summary()
    for k in range(tags):
        value = summary.value.add(tag=f"grad_norm/block{k}_dense", tensor=proto(np.float32(1.0 / (step + k))))
        if step == 1:
            value.metadata.CopyFrom(metadata)
    writer.add(Event(step=step, wall_time=time.time(), summary=summary))
    if step % 1000 == 0:
        writer.flush()
writer.close()
"""

MEASURE = """
import json, resource, sys, time
mode, folder = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "alone":
    import importlib.util, types
    package = types.ModuleType("keras_bn")  # keras_bn/__init__ skipped: only the modules read_run needs
    package.__path__ = [sys.argv[3]]
    sys.modules["keras_bn"] = package
    from keras_bn.events import read_run
elif mode == "package":
    from keras_bn.events import read_run
else:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    def read_run(folder):
        acc = event_accumulator.EventAccumulator(folder + "/train", size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        return {tag: sorted((e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag))
                for tag in acc.Tags()["tensors"]}
imported = time.perf_counter()
rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
series = read_run(folder)
done = time.perf_counter()
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"scalars": sum(map(len, series.values())), "tags": len(series),
                  "cpu_s": usage.ru_utime + usage.ru_stime,
                  "import_s": imported - start, "read_s": done - imported,
                  "rss_imports_mb": rss_imports / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def measure(mode: str, folder: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", MEASURE, mode, folder, os.path.join(REPO, "keras_bn")],
                            capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scalars", type=int, default=1_000_000)
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        folder = os.path.join(root, "run", "train")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", WRITE, folder, str(args.scalars), str(args.tags)], check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        print(f"run: {args.scalars} scalars, {args.tags} tags per event, {size / 2**20:.1f} MiB of event file "
              f"(written in {time.perf_counter() - start:.0f} s)")
        modes = [("package", "keras_bn.events.read_run, package as today (imports Keras + TF)"),
                 ("alone", "keras_bn.events.read_run alone (TensorFlow-free)")]
        if not args.no_baseline:
            modes.append(("baseline", "baseline: TensorBoard EventAccumulator (old report.read_run)"))
        results = {}
        for mode, label in modes:
            r = results[mode] = measure(mode, os.path.join(root, "run"))
            assert r["scalars"] == args.scalars // args.tags * args.tags, r
            print(f"{label:64s} peak RSS {r['peak_rss_mb']:7.0f} MB (imports {r['rss_imports_mb']:4.0f} MB), "
                  f"read {r['read_s']:5.1f} s (+ imports {r['import_s']:.1f} s; CPU in all {r['cpu_s']:.1f} s), "
                  f"TF imported: {r['tensorflow_imported']}")
        if "baseline" in results:
            for mode in ("package", "alone"):
                print(f"ratio {mode} / baseline: peak RSS {results[mode]['peak_rss_mb'] / results['baseline']['peak_rss_mb']:.2f}x, "
                      f"read time {results[mode]['read_s'] / results['baseline']['read_s']:.2f}x, "
                      f"CPU time {results[mode]['cpu_s'] / results['baseline']['cpu_s']:.2f}x")
        alone = results["alone"]
        ok = alone["peak_rss_mb"] <= 300 and alone["read_s"] + alone["import_s"] <= 10
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"target (<= 300 MB peak RSS, <= 10 s) for the reader alone: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
