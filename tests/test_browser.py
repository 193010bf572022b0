"""A real browser on a real TensorBoard: headless Chromium shows what keras-bn logged.

Quick diagnostics logs (`tests._dashboard.write_quick_logs`) are served by
`keras_bn.cli.tensorboard_server`; headless Chromium, driven over the DevTools pipe
(`tests._browser`), opens the scalars dashboard (filtered to the per-layer gradient norms)
and the custom-scalars dashboard, waits until they have rendered our tag names and chart
titles and the network is quiet, and saves a screenshot of each under the test's temporary
folder. The test asserts the rendered text (shadow DOM included), the data requests the
page made, and that the screenshots are real pictures. It skips, saying why, only when no
Chromium is installed (CI installs Debian's ``chromium``).
"""

import struct
import pytest

from keras_bn.cli import tensorboard_server
from tests._browser import CHROMIUM_NAMES, Chromium, dashboard_url, find_chromium
from tests._dashboard import CATEGORY, PERCENTILES_CATEGORY, write_quick_logs

WIDTH, HEIGHT = 1400, 900


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def distinct_colours(path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ())


def test_chromium_renders_our_tags_and_charts(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}): "
                    "install Debian's `chromium` package to run the browser test")
    expected = write_quick_logs(tmp_path / "logs")
    with_weights = expected.layers["relu_clip"][0]
    grad_tags = [f"grad_norm/{name}" for name in with_weights]
    with tensorboard_server(str(tmp_path / "logs")) as url, Chromium(chromium, WIDTH, HEIGHT) as browser:
        # Scalars, filtered to the gradient norms: one card per layer, titled with its tag.
        scalars = browser.screenshot_page(
            dashboard_url(url, "scalars", tagFilter="^grad_norm/", _smoothingWeight=0),
            tmp_path / "scalars.png", expect=grad_tags + ["relu_clip/train", "sigmoid/train"],
        )
        assert "Tags matching" in scalars.text
        assert not any("preclip" in tag for tag in scalars.text.split() if tag.startswith("grad_norm/"))
        assert scalars.to("data/plugin/scalars/tags")
        # Each card fetched its tag's points for the runs shown (POSTed, one request per tag).
        fetched = {(p["tag"][0], run) for p in scalars.to("data/plugin/scalars/scalars_multirun") for run in p["runs"]}
        assert {(tag, "relu_clip/train") for tag in grad_tags} <= fetched, scalars.requests

        # Custom scalars: our categories and one chart per quantity, each fed by its tag regex.
        custom = browser.screenshot_page(
            dashboard_url(url, "custom_scalars"), tmp_path / "custom_scalars.png",
            expect=[CATEGORY, PERCENTILES_CATEGORY, *expected.charts],
        )
        assert custom.to("data/plugin/custom_scalars/layout")
        regex_requests = {(p["run"][0], p["tag"][0]) for p in custom.to("data/plugin/custom_scalars/scalars")}
        for run in ("relu_clip/train", "sigmoid/train"):
            for regex in ("grad_norm/.*", "update_ratio/.*", "activation_std/.*"):
                assert (run, regex) in regex_requests
    for name in ("scalars.png", "custom_scalars.png"):
        assert png_size(tmp_path / name) == (WIDTH, HEIGHT)
        assert distinct_colours(tmp_path / name) > 50, f"{name} looks blank"
