"""StepTaps: the one owner of a model's training-step instrumentation.

A *tap* records statistics inside the real training step (the gradient statistics of
`GradientTap`, the per-channel counts of `BatchNormCheck`). Callbacks never patch anything
themselves: each registers its taps with the model's `StepTaps` at train begin, and the owner

- makes one instrumented train function per (Keras train function, set of taps): Keras' own
  ``make_train_function(force=True)``, traced on its first call with every tap's patches in
  place, and kept, so later fits of the same model with the same taps trace nothing again.
  A function the user assigned to ``model.train_function`` is never replaced: it is called as
  it is, with the patches around each call (so its step records if it traces while patched);
- puts a thin wrapper on ``model.train_function`` for the fit (Keras' ``fit`` looks the
  attribute up at every step, and calls ``make_train_function()`` before ``on_train_begin``);
- applies each tap's patches (``optimizer.apply`` on the instance, a layer's ``call``) only
  *during* a call of that wrapper, in a ``try/finally``: on every way out of ``fit`` (a step that
  raises, a callback that raises, KeyboardInterrupt) the optimizer and layers are as the user
  made them;
- restores Keras' own train function at train end; after a ``fit`` that a callback ended with
  an exception (Keras then skips ``on_train_end``), the wrapper finds at its next call that no
  keras-bn callback armed it (Keras calls ``on_train_batch_begin`` before every
  ``train_function`` call) and puts Keras' function back itself;
- runs the callbacks' failure handlers when a step raises (anything but the end of the data).

On JAX the wrapper is the same, but the patches are applied inside the jitted ``train_step``,
so they exist only while JAX traces it and a step that does not trace runs no tap code at all
(`_patch_inside_trace`); a tap's variables join the optimizer state from `register` until the
fit's end (keras_bn.callbacks._tap_state); a tap class without ``"jax"`` in its ``backends`` is
left out of the step there, with one warning.

Every tap counts, inside the traced step, how often it fired; a callback compares the count
between two reads and never writes a statistic whose count did not move (a step traced before
the tap was attached, a custom training loop that does not call `record_gradients`).

Usage (inside a callback)::

    taps = StepTaps.of(model)
    taps.begin(self)                      # on_train_begin
    tap = taps.gradient_tap(optimizer)    # shared by every callback that wants it
    taps.arm()                            # on_train_batch_begin
    taps.end(self)                        # on_train_end
"""

from __future__ import annotations

import contextlib
import weakref

from keras_bn import _keras_internals as internals
from keras_bn import _warnings
import keras

from keras_bn.callbacks._patch import set_on_instance
from keras_bn.callbacks._tap_state import is_jax, is_tensorflow, with_pending_state

__all__ = ["StepTaps"]


def _is_end_of_data(error: BaseException) -> bool:
    if isinstance(error, StopIteration):
        return True
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(error, tf.errors.OutOfRangeError)


class StepTaps:
    """The instrumentation of one model's training step (one per model: `StepTaps.of`)."""

    _owners: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, model) -> "StepTaps":
        owner = cls._owners.get(model)
        if owner is None:
            owner = cls._owners[model] = cls(model)
        return owner

    def __init__(self, model):
        self._model = weakref.ref(model)
        self.taps: list = []  # registered for the current fit, in registration order
        self.members: list = []  # the keras-bn callbacks of the current fit
        self._cache: dict = {}  # kind -> (objects, compiled helper), kept across fits of this model
        self._traced: dict = {}  # tap ids -> (Keras train function, instrumented function)
        self._shared: dict = {}  # key -> tap, kept across fits so their traced step is reused
        self._keras_function = None
        self._wrapper = None
        self._outer = None  # a user's function that calls the wrapper (`arm`)
        self._in_call = False  # a wrapper's call is running
        self._armed = False
        self._starting = False
        self.calls = 0  # instrumented train-function calls so far (a tap that did not fire: why)
        self._latest_result = None  # what the latest call returned (its logs: `latest_logs`)
        self.logs_call = 0  # the `calls` count of that call
        self.users_function = False  # the fit's train function is one the user assigned
        self._build_checked = False  # `_build_before_first_trace` ran in this fit
        self.failure_handlers: list = []  # run once when a step raises (other callbacks' needs)
        self._attached: list = []  # taps whose state is in the optimizer's state now (JAX)
        self._after_fit: list = []  # run once every member of the fit has ended (`end`)

    def model(self):
        """The model (on JAX without the state sync that reading ``Callback.model`` does)."""
        return self._model()

    # --- the fit's members ------------------------------------------------------------------
    def begin(self, callback) -> None:
        """`callback` takes part in the fit that is starting (its ``on_train_begin``)."""
        if not self._starting:  # the first keras-bn callback of a new fit
            self._drop_stale_members()
            self._starting = True
        if callback not in self.members:
            self.members.append(callback)

    def end(self, callback, then=None) -> None:
        """`callback`'s fit is over; once every member has ended, Keras' train function is back
        and each member's `then()` runs (in end order): work that must not slow the other
        members' train-end work, such as starting a figure on a background thread."""
        if callback in self.members:
            self.members.remove(callback)
        if then is not None:
            self._after_fit.append(then)
        if not self.members:
            self._release()
            self.taps = []
            self._starting = False
            after, self._after_fit = self._after_fit, []
            for function in after:
                function()

    def _drop_stale_members(self) -> None:
        """Members of a fit that ended without ``on_train_end`` (a callback raised)."""
        for callback in list(self.members):
            callback._end_fit()
        self.members = []
        self.taps = []
        self._release()

    def add_failure_handler(self, handler) -> None:
        """Run ``handler()`` when a step of the current fit raises."""
        if handler not in self.failure_handlers:
            self.failure_handlers.append(handler)

    def remove_failure_handler(self, handler) -> None:
        if handler in self.failure_handlers:
            self.failure_handlers.remove(handler)

    def register(self, tap) -> None:
        """Have `tap` in the instrumented step of this fit (call in ``on_train_begin``).

        A tap runs on the backends its class lists in ``backends`` (TensorFlow only when it
        lists none); elsewhere it is left out of the step, with one warning per tap kind, so
        that it never breaks a training step (what it measures is then not written)."""
        if keras.backend.backend() not in getattr(tap, "backends", ("tensorflow",)):
            _warn_left_out(tap)
            return
        if tap not in self.taps:
            self.taps.append(tap)
        state = getattr(tap, "state", None)
        if state is not None and is_jax() and not state.attached:
            # Before the first step takes the state (and before the instrumented function is
            # made, whose output shardings list the optimizer variables).
            state.attach(tap.optimizer, [getattr(self._model(), "optimizer", None)], self._model())
            self._attached.append(tap)

    def cached(self, kind: str, objects, make):
        """A compiled helper of this model (e.g. a traced reduction over `objects`, its
        variables), made by ``make()`` once and kept across fits and callbacks while `objects`
        are the same objects (compared by identity: a recompile's new variables get a new one)."""
        objects = tuple(objects)
        entry = self._cache.get(kind)
        if entry is None or len(entry[0]) != len(objects) or any(a is not b for a, b in zip(entry[0], objects)):
            entry = self._cache[kind] = (objects, make())
        return entry[1]

    def forget(self, kind: str) -> None:
        """Drop the helper `cached` keeps for `kind`."""
        self._cache.pop(kind, None)

    def shared(self, key, make, still_valid=lambda tap: True):
        """The tap stored under `key` (made by ``make()`` the first time, or again when
        ``still_valid(tap)`` is False), kept across fits so that their traced step is reused."""
        tap = self._shared.get(key)
        if tap is None or not still_valid(tap):
            tap = self._shared[key] = make()
        return tap

    def gradient_tap(self, optimizer):
        """The gradient tap of `optimizer` on this model's trainable variables, made once and
        shared (a later fit, or another callback, reuses it and its traced step)."""
        from keras_bn.callbacks._gradient_tap import GradientTap

        variables = list(self._model().trainable_variables)
        key = ("gradients", id(optimizer), tuple(id(v) for v in variables))
        return self.shared(key, lambda: GradientTap(optimizer, variables),
                           lambda tap: tap.optimizer is optimizer and tap.same_setting())

    def current_gradient_tap(self):
        """The gradient tap registered for the current fit, or None."""
        from keras_bn.callbacks._gradient_tap import GradientTap

        return next((t for t in self.taps if isinstance(t, GradientTap)), None)

    # --- the train function ---------------------------------------------------------------
    def arm(self) -> None:
        """Called in ``on_train_batch_begin``: the next train-function call is a step of a fit
        with keras-bn callbacks. Installs the instrumented function at the first one."""
        if self._armed:  # another member armed this call already (a new fit starts disarmed)
            return
        self._armed = True
        self._starting = False
        model = self._model()
        function = getattr(model, "train_function", None)
        if function is None or function is self._wrapper:
            return
        if self._wrapper is not None and (function is self._outer or self._outer is None):
            # The wrapper ran in the last step (it disarmed; a step without it leaves the flag
            # set and returns above), under a function of the user's installed over it, e.g. by
            # a callback at the first batch: kept as it is, the wrapper still runs inside it.
            self._outer = function
            return
        self._install(model, function)

    def _install(self, model, keras_function) -> None:
        self._keras_function, self._outer = keras_function, None
        self._build_checked = False
        instrumented, per_call = keras_function, True
        # A train function the user assigned is theirs to keep: the taps are patched around each
        # call of it (they record if its step traces while patched; a callback warns if not).
        self.users_function = not internals.made_by_make_train_function(keras_function)
        if self.taps and not self.users_function:
            key = tuple(id(t) for t in self.taps)
            cached = self._traced.get(key)
            if cached is not None and cached[0] is keras_function:
                instrumented, per_call = cached[1], cached[2]
            else:
                per_call = not _patch_inside_trace(model, self.taps)  # traced at its first call, taps patched
                instrumented = model.train_function
                self._traced = {k: v for k, v in self._traced.items() if v[0] is keras_function}
                self._traced[key] = (keras_function, instrumented, per_call)
        taps = list(self.taps) if per_call else []
        self._wrapper = self._wrap(keras_function, instrumented, taps)
        model.train_function = self._wrapper

    def _wrap(self, keras_function, instrumented, taps):
        """`taps`: those to patch around each call (none when they patch inside the trace)."""
        def train_function(*args, **kwargs):
            if self._in_call:  # inside a newer wrapper, through a user's function that wraps this one
                return instrumented(*args, **kwargs)
            if not self._armed:  # a fit without keras-bn callbacks: be Keras' function again
                args = self._without_tap_state(args)
                self._release()
                return keras_function(*args, **kwargs)
            self._armed = False
            self.calls += 1
            if not self._build_checked:  # once per fit
                self._build_checked = True
                self._build_before_first_trace(args)
            if self._attached:
                args = with_pending_state(args, self._attached)
            self._in_call = True
            try:
                if not taps:  # JAX: patched inside the trace
                    result = instrumented(*args, **kwargs)
                else:
                    with _patched(taps):
                        result = instrumented(*args, **kwargs)
                # Kept by reference (no host read, no parsing in the step): see `latest_logs`.
                self._latest_result, self.logs_call = result, self.calls
                return result
            except BaseException as error:
                if not _is_end_of_data(error):
                    self._fail()
                raise
            finally:
                self._in_call = False

        return train_function

    @property
    def latest_logs(self):
        """The logs the latest instrumented call returned (what ``fit`` passes to
        ``on_train_batch_end``; `MetricsLogger` writes them at its reads), or None."""
        return internals.train_function_logs(self._latest_result)

    def _build_before_first_trace(self, args) -> None:
        """TensorFlow without a strategy: Keras creates the optimizer's and compiled metrics'
        variables inside the first traced step, which TensorFlow then traces twice. Built first
        from the dataset's ``element_spec`` (as Keras does under a strategy and on JAX), the
        step is traced once, with the same values. Anything unusual: Keras' own way."""
        model = self._model()
        optimizer = getattr(model, "optimizer", None)
        if not is_tensorflow() or optimizer is None or optimizer.built or not args:
            return
        try:
            internals.build_from_dataset_spec(model, args[0])
        except Exception:  # noqa: BLE001  Keras builds them in the first trace, as without keras-bn
            pass

    def _release(self) -> None:
        model = self._model()
        if model is not None and self._wrapper is not None and getattr(model, "train_function", None) is self._wrapper:
            model.train_function = self._keras_function
        self._wrapper = self._outer = None
        self._armed = False
        self._latest_result = None
        attached, self._attached = self._attached, []
        for tap in attached:
            tap.state.detach()

    def _without_tap_state(self, args):
        """JAX: Keras' own step after a fit that a callback ended (its taps still attached):
        the state this step got holds the taps' variables, which Keras' function does not
        expect; drop them (they are the last optimizer variables)."""
        model = self._model()
        if not self._attached or model is None or not args or len(args[0]) != 4:
            return args
        positions = set()
        for tap in self._attached:
            positions.update(tap.state.state_positions(model.optimizer).values())
        trainable, non_trainable, optimizer_values, metrics = args[0]
        optimizer_values = [v for i, v in enumerate(optimizer_values) if i not in positions]
        return ((trainable, non_trainable, optimizer_values, metrics), *args[1:])

    def _fail(self) -> None:
        """A training step raised: every member ends its fit now (Keras skips on_train_end)."""
        handlers, self.failure_handlers = self.failure_handlers, []
        for handler in handlers:
            try:
                handler()
            except Exception as error:  # noqa: BLE001  the step's own error is what the user must see
                _warnings.warn(f"keras_bn failure handler {handler!r} failed: {error!r}", RuntimeWarning)
        for callback in list(self.members):
            callback._end_fit()
        self.members = []
        self.taps = []
        self._release()
        self._starting = False


@contextlib.contextmanager
def _patched(taps):
    """Every tap's patches for the block, undone in reverse order however it ends."""
    patched = []
    try:
        for tap in taps:
            tap.patch()
            patched.append(tap)
        yield
    finally:
        for tap in reversed(patched):
            tap.unpatch()


def _patch_inside_trace(model, taps) -> bool:
    """Make `model`'s train function anew (``make_train_function(force=True)``) with the taps.

    JAX (jitted, without NNX): Keras jits the ``train_step`` it finds at this call, so it gets
    a ``train_step`` that applies the patches around Keras' own, in a ``try/finally``: its Python
    body runs only while JAX traces the step (the first call, a new input shape), and a step that
    does not trace runs none of the taps' Python. Returns False where the patches must be applied
    around each call instead (TensorFlow, PyTorch, JAX with NNX, which jits the class method)."""
    if not (is_jax() and model.jit_compile and not model.run_eagerly and not keras.config.is_nnx_enabled()):
        model.make_train_function(force=True)
        return False
    keras_step = model.train_step

    def train_step(state, data):
        with _patched(taps):
            return keras_step(state, data)

    undo = set_on_instance(model, "train_step", train_step)
    try:
        model.make_train_function(force=True)
    finally:
        undo()
    return True


_LEFT_OUT: set = set()


def _warn_left_out(tap) -> None:
    kind = f"{type(tap).__module__}.{type(tap).__qualname__}"
    if kind in _LEFT_OUT:
        return
    _LEFT_OUT.add(kind)
    _warnings.warn(
        f"keras_bn: the training-step tap {kind} does not run on the {keras.backend.backend()} backend "
        f"yet, so it is left out of the step and what it measures is not recorded (runs on: "
        f"{', '.join(getattr(tap, 'backends', ('tensorflow',)))}).",
        RuntimeWarning,
    )
