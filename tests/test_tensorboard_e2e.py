"""End to end: keras-bn's diagnostics logs, served by a real TensorBoard server over HTTP.

A quick diagnostics run of two tiny models and a one-trial HParams experiment are written
to a temporary folder; `keras_bn.cli.tensorboard_server` starts TensorBoard on 127.0.0.1 on a
free port; its HTTP API (the routes TensorBoard 2.x's own frontend calls) must list the runs
and exactly the scalar, histogram, image, custom-scalars and HParams tags keras-bn documents
(`keras_bn.callbacks`), computed from the models' layer names. The server is stopped when
the ``with`` block ends, whatever happens in it, which the test checks too.
"""

import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests._dashboard import CATEGORY, HPARAMS, HPARAMS_METRIC, PERCENTILES_CATEGORY, write_quick_logs
from keras_bn.cli import tensorboard_server


def get_json(url: str, **params):
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return json.load(response)


def wait_for_runs(url: str, runs: set, timeout: float = 30.0) -> list:
    """``data/runs`` once it lists every run of `runs` (TensorBoard loads the logdir in the
    background after it starts answering)."""
    deadline = time.monotonic() + timeout
    while True:
        served = get_json(url + "data/runs")
        if runs <= set(served) or time.monotonic() > deadline:
            return served
        time.sleep(0.5)


def tags_of(response: dict) -> dict:
    return {run: set(tags) for run, tags in response.items()}


def test_tensorboard_serves_the_documented_tags(tmp_path):
    expected = write_quick_logs(tmp_path)
    with tensorboard_server(str(tmp_path)) as url:
        assert url.startswith("http://127.0.0.1:")
        served_runs = wait_for_runs(url, expected.runs)
        assert expected.runs <= set(served_runs)

        listing = get_json(url + "data/plugins_listing")
        for plugin in ("scalars", "histograms", "images", "custom_scalars", "hparams"):
            assert listing[plugin]["enabled"], f"the {plugin} dashboard is not enabled"

        # Exactly the documented tags, per run (no extra, none missing).
        scalars = tags_of(get_json(url + "data/plugin/scalars/tags"))
        for run, tags in expected.scalars.items():
            assert scalars[run] == tags, run
        assert tags_of(get_json(url + "data/plugin/histograms/tags")) == expected.histograms
        assert tags_of(get_json(url + "data/plugin/images/tags")) == expected.images
        # Spot-check real values behind a per-layer tag: one point per optimizer step 1..3.
        first_dense = expected.layers["relu_clip"][0][0]
        points = get_json(url + "data/plugin/scalars/scalars", run="relu_clip/train", tag=f"grad_norm/{first_dense}")
        assert [step for _, step, _ in points] == [1, 2, 3] and all(v > 0 for _, _, v in points)

        # Custom scalars: one chart per quantity, each a regex over the layers, loss and
        # gradient norms first; the BN-paper percentile charts in a category of their own.
        layout = get_json(url + "data/plugin/custom_scalars/layout")
        assert [c["title"] for c in layout["category"]] == [CATEGORY, PERCENTILES_CATEGORY]
        charts = {chart["title"]: chart["multiline"]["tag"] for c in layout["category"] for chart in c["chart"]}
        assert charts == {title: [regex] for title, regex in expected.charts.items()}
        order = [chart["multiline"]["tag"][0] for chart in layout["category"][0]["chart"]]
        assert order[:5] == ["batch_loss", "epoch_loss", "batch_(?!loss$|learning_rate$).*",
                             "epoch_(?!loss$|learning_rate$).*", "grad_norm/.*"]
        assert all(regex.startswith("preact/") for c in layout["category"][1:] for chart in c["chart"]
                   for regex in chart["multiline"]["tag"])
        # ... and the regex of the gradient-norm chart selects one line per layer with weights.
        lines = get_json(url + "data/plugin/custom_scalars/scalars", run="relu_clip/train", tag="grad_norm/.*")
        assert lines["regex_valid"]
        assert set(lines["tag_to_events"]) == {f"grad_norm/{name}" for name in expected.layers["relu_clip"][0]}

        # HParams: the experiment's hyperparameters and metric, and the trial's values.
        experiment = get_json(url + "data/plugin/hparams/experiment", request=json.dumps({}))
        assert {h["name"] for h in experiment["hparamInfos"]} == set(HPARAMS)
        assert [m["name"]["tag"] for m in experiment["metricInfos"]] == [HPARAMS_METRIC]
        request = {"startIndex": 0, "sliceSize": 10, "allowedStatuses": ["STATUS_UNKNOWN"],
                   "colParams": [{"hparam": name} for name in HPARAMS]
                   + [{"metric": {"tag": HPARAMS_METRIC}}]}
        groups = get_json(url + "data/plugin/hparams/session_groups", request=json.dumps(request))
        assert len(groups["sessionGroups"]) == 1
        group = groups["sessionGroups"][0]
        assert group["hparams"] == pytest.approx(HPARAMS)
        assert [(m["name"]["tag"], m["value"]) for m in group["metricValues"]] == [(HPARAMS_METRIC, 0.75)]
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # stopped
        urllib.request.urlopen(url + "data/runs", timeout=2)
