"""keras_bn._warnings: a warning names the user's line, however deep inside keras-bn it starts."""

import warnings

from keras_bn._warnings import warn


def test_warning_points_at_the_users_line_through_keras_bn_frames(tmp_path):
    # A module inside the keras_bn package folder stands for keras-bn code two calls deep.
    import importlib.util
    from pathlib import Path

    import keras_bn

    inner = Path(keras_bn.__file__).parent / "_warnings_probe_for_tests.py"
    inner.write_text("from keras_bn._warnings import warn\n\ndef deep():\n    return deeper()\n\n"
                     "def deeper():\n    warn('careful', RuntimeWarning)\n")
    try:
        spec = importlib.util.spec_from_file_location("keras_bn._warnings_probe_for_tests", inner)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module.deep(); line = _line()  # noqa: E702  (the user's line: this one)
        assert [(w.category, str(w.message)) for w in caught] == [(RuntimeWarning, "careful")]
        assert caught[0].filename == __file__ and caught[0].lineno == line
    finally:
        inner.unlink()


def test_warning_called_directly_names_the_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn("direct"); line = _line()  # noqa: E702
    assert caught[0].filename == __file__ and caught[0].lineno == line


def _line() -> int:
    import sys

    return sys._getframe(1).f_lineno
