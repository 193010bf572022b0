"""The one way keras-bn replaces a method on an instance (an optimizer's ``apply``, a layer's
``call``) and puts it back.

Usage::

    original = optimizer.apply
    undo = set_on_instance(optimizer, "apply", lambda grads, tv=None: original(grads, tv))
    ...
    undo()   # the instance attribute the user had, or the class's method again
"""

from __future__ import annotations

__all__ = ["set_on_instance"]


def set_on_instance(obj, name: str, value):
    """Set ``obj.<name> = value`` on the instance; returns the undo, which restores what the
    instance held (a user's own patch) or removes ours so the class attribute shows again."""
    had_own, original = name in vars(obj), getattr(obj, name)
    # Straight into the instance's dict: a Keras layer's or optimizer's own __setattr__ runs its
    # object tracking on every assignment, and the taps patch at every training step.
    vars(obj)[name] = value

    def undo():
        if had_own:
            vars(obj)[name] = original
        else:
            vars(obj).pop(name, None)

    return undo
