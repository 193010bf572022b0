"""Count Keras layers created inside a block: proves an error came before any layer."""

import contextlib

import keras


@contextlib.contextmanager
def count_layers(monkeypatch):
    """Yield a list that receives the class name of every Keras layer constructed."""
    created = []
    original = keras.layers.Layer.__init__

    def spy(self, *args, **kwargs):
        created.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__init__", spy)
    try:
        yield created
    finally:
        monkeypatch.setattr(keras.layers.Layer, "__init__", original)
