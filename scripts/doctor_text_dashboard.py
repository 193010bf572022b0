"""Screenshot of TensorBoard's Text dashboard showing the live doctor's findings, for docs/doctor.md.

Runs ``doctor_demo --quick`` (unless given the logs of one), serves its folder with
`keras_bn.cli.tensorboard_server` and saves a headless-Chromium screenshot (the driver of
``tests/test_browser.py``) of the Text dashboard, where the doctor writes its findings (``doctor/findings``).

Usage::

    python scripts/doctor_text_dashboard.py                       # -> docs/figures/doctor_text_dashboard.png
    python scripts/doctor_text_dashboard.py --log-dir logs/doctor_demo/20261201-125349 --out /tmp/shot.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests._browser


def capture(log_dir: Path, out: Path, width: int = 1400, height: int = 900) -> Path:
    """Serve `log_dir` (one doctor_demo invocation) and save the Text dashboard as `out`."""
    from keras_bn.cli import tensorboard_server
    from tests._browser import Chromium, dashboard_url

    out.parent.mkdir(parents=True, exist_ok=True)
    expect = ["doctor/findings", "tiny_init/doctor", "collapsing_activations"]
    with tensorboard_server(str(log_dir)) as url, Chromium(width=width, height=height) as browser:
        shot = browser.screenshot_page(dashboard_url(url, "text"), out, expect,
                                       timeout=90)
    print(f"{out}: Text dashboard rendered in {shot.seconds:.1f} s")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "doctor_text_dashboard.png")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="a doctor_demo invocation folder (default: run doctor_demo --quick first)")
    args = parser.parse_args(argv)
    log_dir = args.log_dir
    if log_dir is None:
        from keras_bn.recipes import doctor_demo

        log_dir = Path(doctor_demo.main(["--quick", "--dataset", "fashion_mnist_small",
                                         "--log-dir", str(ROOT / "logs")])["log_dir"])
    capture(log_dir, args.out)


if __name__ == "__main__":
    main()
