"""The ``keras-bn`` command: list and run recipes, open TensorBoard on their logs.

Usage::

    keras-bn list
    keras-bn run bn_vs_no_bn --quick
    keras-bn tensorboard logs
    keras-bn report logs/bn_vs_no_bn/with_bn

Every command exits with a code from `EXIT_CODES` (0 done, 1 error-level findings, 2 bad
usage or input, 3 nothing readable); an error is one line ``keras-bn: error: ...``, and
``--debug`` prints its traceback too. ``--help`` and ``list`` do not import TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request

from keras_bn import _arg_types as types

__all__ = ["build_parser", "free_port", "main", "tensorboard_argv", "tensorboard_server", "tensorflow_without_jax",
           "without_tensorflow_start_notes"]


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
    from keras_bn.recipes import RECIPES, describe

    width = max(len(n) for n in RECIPES)
    for name in RECIPES:
        print(f"{name.ljust(width)}  {describe(name)}")
    return 0


def _run(args) -> int:
    from keras_bn.recipes import get_recipe

    with without_tensorflow_start_notes(), tensorflow_without_jax():
        recipe = get_recipe(args.recipe)  # a ValueError listing the recipes for an unknown name
    recipe.main([a for a in args.recipe_args if a != "--debug"])
    return 0


# TensorFlow's C++ start-up notes (INFO lines that TF_CPP_MIN_LOG_LEVEL no longer silences in
# TF 2.21, and absl's preamble before them): facts about the build, not about the user's run.
TENSORFLOW_START_NOTES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
)


@contextlib.contextmanager
def without_tensorflow_start_notes():
    """Within the block, what the process writes to its stderr (file descriptor 2, where
    TensorFlow's C++ logging goes) is held back, then written out without the lines naming one
    of `TENSORFLOW_START_NOTES`: every other line (a warning, an error) is kept, in order.

    Example::

        with without_tensorflow_start_notes():
            import tensorflow
    """
    import os
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2 (an embedding host): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True)
                    if not any(note.encode() in line for note in TENSORFLOW_START_NOTES)]
            if kept:
                sys.stderr.flush()
                os.write(2, b"".join(kept))


@contextlib.contextmanager
def tensorflow_without_jax():
    """Within the block, on the TensorFlow backend, ``import jax`` fails (ImportError), so that
    importing TensorFlow does not import JAX: its TFLite converter imports JAX when installed,
    about 1 s of CPU of a recipe's start-up, and no recipe on TensorFlow uses it. After the
    block ``import jax`` works as usual. A no-op on other backends, or once TensorFlow or JAX is
    imported.

    Example::

        with tensorflow_without_jax():
            import keras
    """
    from keras_bn._backend import configured_backend

    if configured_backend() != "tensorflow" or "jax" in sys.modules or "tensorflow" in sys.modules:
        yield
        return
    sys.modules["jax"] = None  # the import system's "not importable" marker
    try:
        yield
    finally:
        if "jax" in sys.modules and sys.modules["jax"] is None:
            del sys.modules["jax"]


def _tensorboard(args) -> int:
    from keras_bn._run_folders import resolve_log_dir

    logdir, note = resolve_log_dir(args.logdir)
    if note:
        print(note, flush=True)
    flags, url = tensorboard_argv(str(logdir), args.port)
    print(f"TensorBoard {url} (logdir {logdir}); press Ctrl-C to stop", flush=True)
    return _serve_tensorboard(flags)


def _serve_tensorboard(flags: list[str]) -> int:
    """Run TensorBoard with `flags` in this process until Ctrl-C; its exit code."""
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=[None, *flags])
    return board.main()


def _runs_in(folder) -> list:
    """The run folders (each holding ``train/``) directly under `folder`, in name order."""
    from pathlib import Path

    return sorted(p for p in Path(folder).iterdir() if p.is_dir() and (p / "train").is_dir())


def _report(args) -> int:
    """Exit codes: 0 done, 1 done with findings at the --fail-on level, 2 bad usage or input,
    3 nothing readable. A recipe's folder: its newest invocation, every run in it side by side."""
    from pathlib import Path

    from keras_bn import events
    from keras_bn._run_folders import resolve_log_dir
    from keras_bn.report import exit_code, report

    if args.max < 1:
        print(f"keras-bn: `--max` must be an integer >= 1. Received: --max={args.max}", file=sys.stderr)
        return 2
    if not Path(args.logdir).exists():
        print(f"keras-bn: no such folder: {args.logdir!r}; pass the folder given to "
              "keras_bn.callbacks.diagnostics (it holds train/ and validation/).", file=sys.stderr)
        return 2
    folder, note = resolve_log_dir(args.logdir)
    if note:
        print(note)
    has_events = bool(events.event_files(events.run_event_folder(folder)))
    runs = [folder] if has_events else _runs_in(folder)
    if not runs:
        print(f"keras-bn: nothing readable: no TensorBoard event files in {str(folder)!r} or in a run "
              f"folder inside it (a folder with train/); pass the folder given to "
              f"keras_bn.callbacks.diagnostics.", file=sys.stderr)
        return 3
    results, codes = [], []
    for run in runs:
        try:
            result = report(run, max_per_severity=args.max)
        except Exception as err:  # noqa: BLE001  an unreadable run: say so, never a traceback
            print(f"keras-bn: could not read the run in {str(run)!r}: {err}", file=sys.stderr)
            codes.append(3)
            continue
        print(result)
        if result.kind in (events.KIND_EMPTY, events.KIND_OTHER) or (not result.rows and not result.findings):
            print(f"keras-bn: nothing readable: no keras-bn diagnostics scalars in {str(run)!r} ({result.kind})",
                  file=sys.stderr)
            codes.append(3)
            continue
        results.append((run, result))
        codes.append(exit_code(result.findings, args.fail_on))
    if len(runs) > 1 and results:
        print(_side_by_side(results))
    return max(codes)


def _side_by_side(results) -> str:
    """One row per run: its headline figures and finding counts."""
    from keras_bn._tables import format_table

    rows = []
    for run, result in results:
        counts = {s: sum(f.severity == s for f in result.findings) for s in ("error", "warning", "info")}
        grads = [r["grad_final"] for r in result.rows if r.get("grad_final") is not None]
        rows.append([run.name, len(result.rows), f"{max(grads):.3g}" if grads else "-",
                     counts["error"], counts["warning"], counts["info"]])
    return "\nruns side by side\n" + format_table(
        ["run", "layers", "largest final grad norm", "errors", "warnings", "infos"], rows)


def _exit_code_epilog() -> str:
    rows = "\n".join(f"  {code}  {meaning}" for code, meaning in types.EXIT_CODES.items())
    return f"exit codes (every command):\n{rows}"


def build_parser() -> argparse.ArgumentParser:
    parser = types.ArgumentParser(
        prog="keras-bn",
        description="keras-bn: the classic deep-learning training experiments as recipes, "
        "and TensorBoard on what they logged.",
        epilog=_exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=types.ArgumentParser)
    sub.add_parser("list", help="list the recipes with a one-line description").set_defaults(func=_list)
    run = sub.add_parser(
        "run", help="run a recipe (keras-bn run NAME --help for its options)",
        description="Run one recipe; every option after NAME goes to the recipe "
        "(common ones: --quick, --seed, --epochs, --dataset, --data-dir, --log-dir, "
        "--strategy {none,mirrored,multiworker}, --mixed-precision {float16,bfloat16}). "
        "Each run writes a fresh folder <log-dir>/NAME/<date-time>/ and prints it; nothing is deleted.",
        epilog=_exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("recipe", metavar="NAME", help="a recipe name from `keras-bn list`")
    run.add_argument("recipe_args", nargs=argparse.REMAINDER, help="options for the recipe")
    run.set_defaults(func=_run)
    board = sub.add_parser("tensorboard", help="start TensorBoard on 127.0.0.1 and print its URL",
                           description="Start TensorBoard on LOGDIR; on a recipe's folder "
                           "(logs/NAME), on its newest run.", epilog=_exit_code_epilog(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    board.add_argument("logdir", nargs="?", default="logs", type=types.existing_dir,
                       help="log folder (default logs)")
    board.add_argument("--port", type=types.port, default=None, help="port 1-65535 (default: a free one)")
    board.set_defaults(func=_tensorboard)
    rep = sub.add_parser("report", help="diagnose a run from its event files: a per-layer table and the doctor's findings",
                         description="Per layer: final/min/max gradient norm, update ratio, dead and "
                         "saturated fractions, activation std; then the doctor's findings, ranked and grouped "
                         "(rules and thresholds: docs/doctor.md). Exit codes: 0 done, 1 findings at the "
                         "--fail-on level, 2 bad usage or input, 3 nothing readable.",
                         epilog=_exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("logdir", help="the run folder passed to keras_bn.callbacks.diagnostics")
    rep.add_argument("--fail-on", choices=("error", "warning", "never"), default="error",
                     help="exit 1 when a finding of this severity or worse exists (default error)")
    rep.add_argument("--max", type=int, default=10, metavar="N",
                     help="show at most N findings per severity, then a summary line (default 10)")
    rep.set_defaults(func=_report)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (ValueError, OSError, TypeError)) else f"{type(err).__name__}: {text}"


def main(argv=None) -> int:
    """Run the ``keras-bn`` command on `argv` (default ``sys.argv[1:]``); return its exit code."""
    debug = types.debug_requested(argv)
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("keras-bn: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # argparse's --help (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    except Exception as err:  # noqa: BLE001  (one line for the user; --debug for the traceback)
        if debug:
            import traceback

            traceback.print_exc()
        print(f"keras-bn: error: {_one_line(err)}"
              + ("" if debug or isinstance(err, (ValueError, OSError)) else " (--debug shows the traceback)"),
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
