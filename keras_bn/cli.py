"""The ``keras-bn`` command: list and run recipes, open TensorBoard on their logs.

Usage::

    keras-bn list
    keras-bn run bn_vs_no_bn --quick
    keras-bn tensorboard logs
    keras-bn report logs/bn_vs_no_bn/with_bn
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tensorboard_argv(logdir: str, port: int | None = None, host: str = "127.0.0.1") -> tuple[list[str], str]:
    """TensorBoard's command-line flags for `logdir` on `host` and the URL it will serve."""
    port = port or free_port(host)
    return ["--logdir", str(logdir), "--host", host, "--port", str(port)], f"http://{host}:{port}/"


@contextlib.contextmanager
def tensorboard_server(logdir: str, port: int | None = None, timeout: float = 60.0):
    """Run TensorBoard in a child process on 127.0.0.1 until the block ends; yield its URL.

    The server is stopped (terminated, then killed) whatever happens inside the block.

    Example::

        with tensorboard_server("logs") as url:
            urllib.request.urlopen(url + "data/runs")
    """
    flags, url = tensorboard_argv(logdir, port)
    process = subprocess.Popen([sys.executable, "-m", "tensorboard.main", *flags],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"TensorBoard exited with code {process.returncode}: "
                                   f"{process.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                urllib.request.urlopen(url + "data/environment", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"TensorBoard did not answer on {url} within {timeout:.0f} s") from None
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()


def _list(args) -> int:
    from keras_bn.recipes import RECIPES, get_recipe

    width = max(len(n) for n in RECIPES)
    for name in RECIPES:
        print(f"{name.ljust(width)}  {get_recipe(name).DESCRIPTION}")
    return 0


def _run(args) -> int:
    from keras_bn.recipes import get_recipe

    try:
        recipe = get_recipe(args.recipe)
    except ValueError as err:
        print(f"keras-bn: {err}", file=sys.stderr)
        return 2
    recipe.main(args.recipe_args)
    return 0


def _tensorboard(args) -> int:
    from tensorboard import program

    flags, url = tensorboard_argv(args.logdir, args.port)
    board = program.TensorBoard()
    board.configure(argv=[None, *flags])
    print(f"TensorBoard {url} (logdir {args.logdir}); press Ctrl-C to stop", flush=True)
    return board.main()


def _report(args) -> int:
    """Exit codes: 0 done, 1 done with findings at the --fail-on level, 2 bad usage or input,
    3 nothing readable."""
    from pathlib import Path

    from keras_bn.report import exit_code, report

    if args.max < 1:
        print(f"keras-bn: `--max` must be an integer >= 1. Received: --max={args.max}", file=sys.stderr)
        return 2
    if not Path(args.logdir).exists():
        print(f"keras-bn: no such folder: {args.logdir!r}; pass the folder given to "
              "keras_bn.callbacks.diagnostics (it holds train/ and validation/).", file=sys.stderr)
        return 2
    try:
        result = report(args.logdir, max_per_severity=args.max)
    except FileNotFoundError as err:
        print(f"keras-bn: {err}", file=sys.stderr)
        return 3
    except Exception as err:  # noqa: BLE001  an unreadable run: say so, never a traceback
        print(f"keras-bn: could not read the run in {args.logdir!r}: {err}", file=sys.stderr)
        return 3
    if not result.rows and not result.findings:
        print(result)
        print(f"keras-bn: nothing readable: no keras-bn diagnostics scalars in {args.logdir!r}", file=sys.stderr)
        return 3
    print(result)
    return exit_code(result.findings, args.fail_on)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-bn",
        description="keras-bn: the classic deep-learning training experiments as recipes, "
        "and TensorBoard on what they logged.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="list the recipes with a one-line description").set_defaults(func=_list)
    run = sub.add_parser(
        "run", help="run a recipe (keras-bn run NAME --help for its options)",
        description="Run one recipe; every option after NAME goes to the recipe "
        "(common ones: --quick, --seed, --epochs, --dataset, --data-dir, --log-dir, "
        "--strategy {none,mirrored,multiworker}, --mixed-precision {float16,bfloat16}).",
    )
    run.add_argument("recipe", metavar="NAME", help="a recipe name from `keras-bn list`")
    run.add_argument("recipe_args", nargs=argparse.REMAINDER, help="options for the recipe")
    run.set_defaults(func=_run)
    board = sub.add_parser("tensorboard", help="start TensorBoard on 127.0.0.1 and print its URL")
    board.add_argument("logdir", nargs="?", default="logs", help="log folder (default logs)")
    board.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    board.set_defaults(func=_tensorboard)
    rep = sub.add_parser("report", help="diagnose a run from its event files: a per-layer table and the doctor's findings",
                         description="Per layer: final/min/max gradient norm, update ratio, dead and "
                         "saturated fractions, activation std; then the doctor's findings, ranked and grouped "
                         "(rules and thresholds: docs/doctor.md). Exit codes: 0 done, 1 findings at the "
                         "--fail-on level, 2 bad usage or input, 3 nothing readable.")
    rep.add_argument("logdir", help="the run folder passed to keras_bn.callbacks.diagnostics")
    rep.add_argument("--fail-on", choices=("error", "warning", "never"), default="error",
                     help="exit 1 when a finding of this severity or worse exists (default error)")
    rep.add_argument("--max", type=int, default=10, metavar="N",
                     help="show at most N findings per severity, then a summary line (default 10)")
    rep.set_defaults(func=_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
