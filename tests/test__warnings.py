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


# --- every call site in keras_bn goes through keras_bn._warnings.warn ------------------------


def test_keras_bn_warns_only_through_keras_bn_warnings():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "keras_bn"
    direct = [f"{p.relative_to(root)}:{n}" for p in sorted(root.rglob("*.py")) if p.name != "_warnings.py"
              for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"(?<![_\w])warnings\.warn\(", line)]
    assert not direct, direct


def test_a_builders_warning_names_the_users_line(monkeypatch):
    import keras

    import keras_bn
    from keras_bn import _backend

    monkeypatch.setitem(_backend._NCHW_ON_CPU, "result", False)  # as on a CPU without oneDNN
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras_bn.build_conv((1, 4, 4), [2], 2, data_format="channels_first"); line = _line()  # noqa: E702
        block = keras_bn.ConvBlock(2, data_format="channels_first"); block_line = _line()  # noqa: E702
        block(keras.Input((1, 4, 4)))
    found = [(w.filename, w.lineno) for w in caught if "channels_first" in str(w.message)]
    assert found == [(__file__, line), (__file__, block_line)]


def test_a_callbacks_warning_during_fit_names_the_fit_line(tmp_path):
    import keras
    import numpy as np

    from keras_bn import callbacks as kbc

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, trainable=False)])
    model.compile("sgd", "mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(np.zeros((4, 3)), np.zeros((4, 2)), verbose=0,
                  callbacks=[kbc.GradientNorms(str(tmp_path), every=1)]); line = _line()  # noqa: E702
    ours = [w for w in caught if "no trainable weights" in str(w.message)]
    assert len(ours) == 1 and (ours[0].filename, ours[0].lineno) == (__file__, line - 1)


def test_a_tools_warning_names_the_users_line():
    import keras
    import numpy as np

    import keras_bn

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    grads = [np.zeros(v.shape, "float32") for v in model.trainable_variables]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras_bn.callbacks.record_gradients(model, grads, model.trainable_variables); line = _line()  # noqa: E702
        keras_bn.BatchNormCheck; old_line = _line()  # noqa: B018, E702  (a renamed name: DeprecationWarning)
    where = {str(w.message).split(":")[0].split(" was")[0]: (w.filename, w.lineno) for w in caught}
    assert where["keras_bn record_gradients"] == (__file__, line)
    assert where["keras_bn.BatchNormCheck"] == (__file__, old_line)
