"""The README's and the guide pages' Python blocks run, in order, in a fresh process (issue 17).

Each page's ```python blocks are joined into one script (a block may use what an earlier one
defined, as a reader would) and run with a temporary folder as the working directory, so
``logs/`` and saved files land there. A block that breaks fails here, with the page, the
block's first line and the error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/builders.md", "docs/diagnostics.md", "docs/training_tools.md",
         "docs/distribute.md", "docs/activations.md", "docs/EVENTS.md", "docs/recurrent.md", "docs/recipes.md",
         "docs/jax.md"]
PAGE_ENV = {"docs/jax.md": {"KERAS_BACKEND": "jax"}}  # a page written for another backend runs on it
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of `page`, in order."""
    return BLOCK.findall((ROOT / page).read_text())


def script(blocks: list[str]) -> str:
    """One script that runs `blocks` in order and names the block that raised."""
    parts = ["import sys, traceback"]
    for i, block in enumerate(blocks):
        first = block.strip().splitlines()[0] if block.strip() else ""
        parts.append(f"print('--- block {i + 1}: ' + {first!r}, flush=True)")
        parts.append(block)
    return "\n".join(parts)


def test_the_readme_is_short_and_links_its_guides():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 120
    for page in PAGES[1:]:
        assert f"]({page})" in text, page
    assert "``grad_norm/<layer>``" not in text and "| `grad_norm/<layer>`" not in text  # the tag table lives in docs/diagnostics.md


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run_in_order_in_a_fresh_process(page, tmp_path):
    blocks = python_blocks(page)
    assert blocks, f"{page} is listed as a tested page but has no python blocks"
    if PAGE_ENV.get(page, {}).get("KERAS_BACKEND") == "jax":
        pytest.importorskip("jax", reason=f"{page} runs on the JAX backend: pip install -e '.[jax]'")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", **PAGE_ENV.get(page, {})}
    env.pop("KERAS_BN_DATA_DIR", None)
    done = subprocess.run([sys.executable, "-c", script(blocks)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    shown = [line for line in done.stdout.splitlines() if line.startswith("--- block ")]
    assert done.returncode == 0, f"{page}, {shown[-1] if shown else 'before block 1'}:\n{done.stderr[-3000:]}"
    assert len(shown) == len(blocks)


def test_set_mixed_precision_none_restores_float32():
    code = ("from keras_bn import distribute; import keras; distribute.set_mixed_precision('bfloat16'); "
            "print(keras.mixed_precision.global_policy().name, distribute.set_mixed_precision(None), "
            "keras.mixed_precision.global_policy().name)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["mixed_bfloat16", "float32", "float32"], done.stderr[-2000:]
