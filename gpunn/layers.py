"""Layers: each forward with its backward right below it.

A layer is bound to a backend when built.  Parameters and their gradients are
allocated once; activations live in buffers sized for the largest batch seen and
are sliced (``buf[:n]``, still contiguous) for smaller ones, so a steady-state
training step allocates nothing.

Shapes: x (N, in), W (in, out), b (out,), y (N, out).  ``Dense`` computes
``y = act(x W + b)`` with the bias add and activation fused in one op.

Checks happen once, at the layer's boundary: ``forward`` checks its input and
``backward`` the incoming gradient (shape, dtype, C-contiguity, with the layer's name
in the message); everything else a layer hands to an op is its own buffer, known to
fit.  So layers call the backends' implementations without checks
(``backend.unchecked.gemm``, ...): the public op methods would repeat the same checks on
every call, which on a small network costs more than the arithmetic.

A ``Sequential`` keeps all of its parameters in one flat array (and all gradients in
another); each layer's ``W``, ``b``, ``dW``, ``db`` are C-contiguous views into them,
so an optimizer can update the whole model with one fused op.
"""
from __future__ import annotations

import contextlib

import numpy as np

from gpunn.backend import get_backend
from gpunn.backend.ops import ACTIVATIONS
from gpunn.kernels.activations import ACTIVATIONS as ACTIVATION_RECORDS
from gpunn.checks import COUNT, DROP_PROBABILITY, SEED32, array, array_type
from gpunn.errors import GpunnError, ShapeError

#: What the last layer of :func:`mlp` may be: a Dense activation, or a Softmax layer after it.
OUTPUT_ACTIVATIONS = (*ACTIVATIONS, "softmax")


class Layer:
    """Base class.  ``forward(x)`` returns y and keeps what ``backward(dy)`` needs.

    The y that ``forward`` returns (and the dx of ``backward``) is a view of the layer's own
    buffer, which the next call overwrites: copy it (``backend.to_numpy`` does, on a GPU;
    ``y.copy()`` anywhere) to keep it past the next forward.  ``Sequential.predict`` copies."""

    params: tuple = ()
    grads: tuple = ()
    #: attribute names of ``params`` and ``grads``, in order (to move them into a model's flat storage)
    param_names: tuple = ()
    grad_names: tuple = ()
    #: False for the first layer of a model: its input gradient is never used.
    needs_input_grad = True
    #: True while training (the default), False in evaluation (``Sequential.train()``/``.eval()``):
    #: a layer that behaves differently in the two (dropout) reads it
    training = True

    def __init__(self, backend=None):
        self.backend = get_backend(backend)
        self._bufs = {}
        self._y = None  # the last forward's output (None: no forward yet)

    def _buffer(self, name, n, width):
        """An (n, width) float32 activation buffer: allocated for the largest n seen, sliced below it."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < n:
            buf = self._bufs[name] = self.backend.empty((n, width))
        return buf[:n]

    def _check_input(self, x, width):
        array_type(f"{self}", "the input", x, self.backend)
        if getattr(x, "ndim", None) != 2:
            raise ShapeError(f"{self}: expected input of shape (batch, {width}), got {getattr(x, 'shape', type(x).__name__)}")
        if x.shape[1] != width:
            raise ShapeError(f"{self}: expected input of shape (batch, {width}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ShapeError(f"{self}: empty batch (0 rows)")
        array(f"{self}", "input", x, dtype=self.backend.dtype)  # the dtype and C-contiguity

    def _check_grad(self, dy, width):
        """dy must match the output of the last forward: (N, width), the dtype, C-contiguous."""
        if self._y is None:
            raise GpunnError(f"{self}: backward() called before forward(): there is no output to differentiate")
        array_type(f"{self}", "the gradient", dy, self.backend)
        n = self._y.shape[0]
        if getattr(dy, "shape", None) != (n, width) or dy.dtype != self.backend.dtype or not dy.flags.c_contiguous:
            raise ShapeError(f"{self}: the gradient must be a C-contiguous {self.backend.dtype} array of shape "
                             f"{(n, width)} like the last output, got {getattr(dy, 'dtype', type(dy).__name__)}"
                             f"{tuple(getattr(dy, 'shape', ()))}")

    def use_storage(self, params, grads):
        """Move this layer's parameters and gradients into ``params``/``grads`` (same shapes: views
        into a model's flat arrays), copying their values; the old arrays are no longer used.
        The attributes named in ``param_names``/``grad_names`` are pointed at the new arrays."""
        for names, new, old in ((self.param_names, params, self.params), (self.grad_names, grads, self.grads)):
            for name, a, b in zip(names, new, old):
                a[...] = b
                setattr(self, name, a)
        try:
            self.params, self.grads = tuple(params), tuple(grads)
        except AttributeError:  # a read-only property: the model could not point it at its storage
            raise TypeError(f"{type(self).__name__}: params and grads must be plain attributes (tuples the model "
                            f"replaces with views into its flat storage), not read-only properties: "
                            f"see gpunn.layers.register_layer") from None

    def config(self) -> dict:
        """What it takes to rebuild this layer (stored in checkpoints): ``{"type": its registered
        name, **arguments}``, where ``type(self)(**arguments, backend=be)`` builds it again."""
        raise NotImplementedError(f"{type(self).__name__} defines no config(): see gpunn.layers.register_layer")

    def __repr__(self):
        try:
            c = self.config()
        except NotImplementedError:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in c.items() if k != 'type')})"


class Dense(Layer):
    """Fully connected layer ``y = act(x W + b)``.

    Initialisation is the one the activation's record names: He-normal (std sqrt(2/in)) for
    relu, GELU and SiLU, Glorot-uniform (limit sqrt(6/(in+out))) for sigmoid, tanh and identity;
    zero bias. ``forward`` keeps what the record says the backward reads: the output, or (GELU,
    SiLU) the input of the activation too.
    """

    param_names, grad_names = ("W", "b"), ("dW", "db")

    def __init__(self, in_features, out_features, activation="identity", *, backend=None, rng=None):
        super().__init__(backend)
        for what, v in (("in_features", in_features), ("out_features", out_features)):
            if not COUNT.ok(v):
                raise ValueError(f"Dense: {what} must be a positive integer, got {v!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Dense: unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
        self.in_features, self.out_features, self.activation = int(in_features), int(out_features), activation
        rng = rng if rng is not None else np.random.default_rng(0)
        self._grad_from_input = ACTIVATION_RECORDS[activation].grad_from == "input"
        if ACTIVATION_RECORDS[activation].init == "he":
            w = rng.standard_normal((in_features, out_features)) * np.sqrt(2.0 / in_features)
        else:
            limit = np.sqrt(6.0 / (in_features + out_features))
            w = rng.uniform(-limit, limit, (in_features, out_features))
        be = self.backend
        self.W = be.asarray(w, be.dtype)
        self.b = be.zeros((out_features,))
        self.dW = be.zeros((in_features, out_features))
        self.db = be.zeros((out_features,))
        self.params, self.grads = (self.W, self.b), (self.dW, self.db)

    def __repr__(self):
        act = "" if self.activation == "identity" else f", {self.activation}"
        return f"Dense({self.in_features}→{self.out_features}{act})"

    def config(self):
        return {"type": "Dense", "in": self.in_features, "out": self.out_features, "activation": self.activation}

    def forward(self, x):
        self._check_input(x, self.in_features)
        be = self.backend
        y = self._buffer("y", x.shape[0], self.out_features)
        if self._grad_from_input:                                    # the backward reads z = x W + b
            z = self._buffer("z", x.shape[0], self.out_features)
            be.unchecked.linear(x, self.W, self.b, "identity", z)
            be.unchecked.bias_act(z, None, self.activation, y)
            self._saved = z
        else:
            be.unchecked.linear(x, self.W, self.b, self.activation, y)  # act((N,in) @ (in,out) + b)
            self._saved = y
        self._x, self._y = x, y
        return y

    def backward(self, dy, bias_grad_done=False, below=None):
        """dx from dy (None for a model's first layer), with dW and db.

        ``bias_grad_done``: dy is already the gradient of this layer's pre-activation ``x W + b`` and
        db is written, by a loss that sums its gradient (see ``Sequential.output_bias_grad``; then
        the layer is an identity one) or by the layer above, which took its input gradient through
        this layer's activation (``below``, next).  ``below``: the Dense layer whose output is this
        layer's input: the input gradient is then taken through below's activation, with below's
        bias gradient summed, in the same op as this layer's dW (``linear_backward``: one kernel
        with gpunn's GEMM, the unfused three with cuBLAS), and what this returns is below's
        pre-activation gradient, for ``below.backward(..., bias_grad_done=True)``."""
        self._check_grad(dy, self.out_features)
        be, n = self.backend, dy.shape[0]
        dz = dy                                                      # (bias_grad_done: so it is, and db is written)
        if not bias_grad_done and self.activation != "identity":       # dz = dy * act'(z); db = Σ_rows dz
            dz = self._buffer("dz", n, self.out_features)
            be.unchecked.act_bias_backward(self._saved, dy, self.activation, dz, self.db)
        elif not bias_grad_done and below is not None:
            with be.branch():
                be.unchecked.bias_grad(dz, self.db)                  # db = Σ_rows dz
        if below is not None and self.needs_input_grad:              # dW, and dx through below's activation
            dx = self._buffer("dx", n, self.in_features)
            be.unchecked.linear_backward(self._x, dz, self.W, self.dW, dx, below._saved, below.activation, below.db)
            return dx
        with be.branch():                                            # (may run beside dx; see Backend.branch)
            if not bias_grad_done and self.activation == "identity":
                be.unchecked.bias_grad(dz, self.db)                  # db = Σ_rows dz
            be.unchecked.gemm(self._x, dz, self.dW, trans_a=True, trans_b=False, accumulate=False)  # dW = xᵀ dz
        if not self.needs_input_grad:
            return None
        dx = self._buffer("dx", n, self.in_features)
        be.unchecked.gemm(dz, self.W, dx, trans_a=False, trans_b=True, accumulate=False)  # dx = dz Wᵀ
        return dx


class Activation(Layer):
    """A standalone row- or element-wise function of a fixed width, with no parameters.

    Subclasses name an activation (``Dense(..., activation=...)`` fuses it instead)
    or, like Softmax, replace ``_apply``/``_gradient``."""

    activation = "identity"

    def __init__(self, width, *, backend=None):
        super().__init__(backend)
        if not COUNT.ok(width):
            raise ValueError(f"{type(self).__name__}: width must be a positive integer, got {width!r}")
        self.width = int(width)

    def __repr__(self):
        return f"{type(self).__name__}({self.width})"

    def config(self):
        return {"type": type(self).__name__, "width": self.width}

    def _apply(self, x, y):
        self.backend.unchecked.bias_act(x, None, self.activation, y)

    def _gradient(self, s, dy, dx):
        self.backend.unchecked.act_backward(s, dy, self.activation, dx)

    def forward(self, x):
        self._check_input(x, self.width)
        y = self._buffer("y", x.shape[0], self.width)
        self._apply(x, y)
        self._y = y
        # what the backward reads: the output, or the input where the activation's record says so
        self._saved = x if ACTIVATION_RECORDS[self.activation].grad_from == "input" else y
        return y

    def backward(self, dy):
        self._check_grad(dy, self.width)
        dx = self._buffer("dx", dy.shape[0], self.width)
        self._gradient(self._saved, dy, dx)
        return dx


class Softmax(Activation):
    """Row-wise softmax as a layer (for MSE on probabilities; cross-entropy fuses it instead)."""

    def _apply(self, x, y):
        self.backend.unchecked.softmax(x, y)

    def _gradient(self, y, dy, dx):
        self.backend.unchecked.softmax_backward(y, dy, dx)           # y * (dy - Σ dy·y)


class Dropout(Layer):
    """Inverted dropout of a fixed width: in training mode each element is zeroed with probability
    ``p`` and the rest scaled by ``1/(1-p)``; in eval mode the identity (the input itself).

    The mask comes from a counter-based generator (the ``dropout`` op): the layer's ``seed``, its
    count of training forwards (``counter``, on the device: counted by the ``count_step`` op, so
    a step replayed as a CUDA graph draws a new mask) and the element's index.  No generator
    state on the host and no mask in memory: the backward recomputes it.  A resumed run sets
    ``counter`` to the steps already taken (:meth:`set_count`), so it draws the masks it would have."""

    def __init__(self, width, p=0.5, seed=0, *, backend=None):
        super().__init__(backend)
        if not COUNT.ok(width):
            raise ValueError(f"Dropout: width must be a positive integer, got {width!r}")
        self.width = int(width)
        self.p = DROP_PROBABILITY.check("Dropout", "p", p)
        self.seed = int(SEED32.check("Dropout", "seed", seed))
        self.counter = self.backend.zeros((1,), np.int32)  # training forwards so far

    def __repr__(self):
        return f"Dropout({self.width}, p={self.p:g})"

    def config(self):
        return {"type": "Dropout", "width": self.width, "p": self.p, "seed": self.seed}

    def set_count(self, n: int) -> None:
        """Set the count of training forwards (a resumed run's steps so far)."""
        self.backend.upload(np.array([n], np.int32), self.counter)

    def forward(self, x):
        self._check_input(x, self.width)
        if not self.training or self.p == 0:
            self._y, self._dropped = x, False
            return x
        y = self._buffer("y", x.shape[0], self.width)
        ops = self.backend.unchecked
        ops.count_step(self.counter)  # this forward's number, before the mask reads it
        ops.dropout(x, y, self.p, self.seed, self.counter)
        self._y, self._dropped = y, True
        return y

    def backward(self, dy):
        self._check_grad(dy, self.width)
        if not self._dropped:
            return dy
        dx = self._buffer("dx", dy.shape[0], self.width)
        self.backend.unchecked.dropout_backward(dy, dx, self.p, self.seed, self.counter)  # the same mask
        return dx


def register_layer(cls):
    """Make a layer class of your own known to :func:`from_config` (and so to checkpoints,
    ``gpunn.load`` and the trainer's resume) under its class name; usable as a decorator.

    The contract of a layer (see :class:`Layer`): ``__init__(..., *, backend=None)`` calls
    ``super().__init__(backend)`` and makes its parameters and their gradients as plain
    attributes, listed in ``params``/``grads`` (tuples of backend arrays of the backend's dtype)
    and named in ``param_names``/``grad_names``: a model moves them into its flat storage (one
    update op for every parameter) and points those attributes at the views, so read them
    through the attributes, never keep an array of your own.  ``forward(x)`` returns the output
    and keeps what ``backward(dy)`` needs; ``backward(dy)`` accumulates nothing (it *writes* the
    gradients) and returns the input gradient.  ``config()`` returns ``{"type": class name,
    **arguments}`` such that ``cls(**arguments, backend=be)`` rebuilds the layer; its ``repr``
    is made from it.  Its parameter shapes are read by building it on the numpy backend."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"register_layer: {cls!r} is not a subclass of gpunn.layers.Layer")
    if cls.__name__ in BUILTIN_LAYERS and LAYER_TYPES[cls.__name__] is not cls:
        raise ValueError(f"register_layer: {cls.__name__} is one of gpunn's own layers")
    LAYER_TYPES[cls.__name__] = cls
    return cls


def _activation_layer(record):
    return type(record.layer, (Activation,), {"activation": record.name, "__module__": __name__,
                                              "__doc__": f"The {record.name} activation as a layer of its own."})


#: one standalone layer per activation record but identity (``ReLU(width)``, ``GELU(width)``, ...)
ACTIVATION_LAYERS = {a.layer: _activation_layer(a) for a in ACTIVATION_RECORDS.values() if a.name != "identity"}
globals().update(ACTIVATION_LAYERS)  # gpunn.layers.ReLU, .Sigmoid, .Tanh, .GELU, .SiLU

LAYER_TYPES = {"Dense": Dense, **ACTIVATION_LAYERS, "Softmax": Softmax, "Dropout": Dropout}
BUILTIN_LAYERS = frozenset(LAYER_TYPES)


class Packed(list):
    """A list of arrays that are views into one flat array, ``flat``, at ``offsets``.

    ``Sequential.params`` and ``.grads`` are Packed: an optimizer that sees ``.flat``
    on both (with the same offsets) may update every parameter with one op."""

    def __init__(self, arrays, flat, offsets):
        super().__init__(arrays)
        self.flat, self.offsets = flat, tuple(offsets)


#: each array in the flat storage starts on a multiple of this many elements (64 bytes
#: of float32: a cache line, and aligned for vector loads); the gaps hold zeros
ALIGN = 16


def _pack(backend, shapes):
    """One zeroed flat array and a C-contiguous view into it for each shape: a Packed."""
    offsets, total = [], 0
    for shape in shapes:
        offsets.append(total)
        total += -(-int(np.prod(shape)) // ALIGN) * ALIGN
    flat = backend.zeros((total,))
    return Packed([flat[o:o + int(np.prod(s))].reshape(s) for o, s in zip(offsets, shapes)], flat, offsets)


class Sequential:
    """Layers applied in order; backward runs them in reverse (the chain rule)."""

    def __init__(self, layers):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("Sequential: needs at least one layer")
        self.backend = self.layers[0].backend
        for layer in self.layers:
            layer.needs_input_grad = True
        self.layers[0].needs_input_grad = False
        # move every layer's parameters (and gradients) into one flat array (and another)
        shapes = [tuple(p.shape) for layer in self.layers for p in layer.params]
        self._params, self._grads = _pack(self.backend, shapes), _pack(self.backend, shapes)
        params, grads = list(self._params), list(self._grads)
        for layer in self.layers:
            k = len(layer.params)
            layer.use_storage(params[:k], grads[:k])
            params, grads = params[k:], grads[k:]

    def __repr__(self):
        return "Sequential(" + ", ".join(map(repr, self.layers)) + ")"

    @property
    def in_features(self):
        first = self.layers[0]
        return getattr(first, "in_features", getattr(first, "width", None))

    @property
    def out_features(self):
        last = self.layers[-1]
        return getattr(last, "out_features", getattr(last, "width", None))

    @property
    def params(self):
        """Every parameter array, layer by layer (views into one flat array: ``.flat``)."""
        return Packed(self._params, self._params.flat, self._params.offsets)

    @property
    def grads(self):
        """Every gradient array, matching ``params`` (views into ``.flat``)."""
        return Packed(self._grads, self._grads.flat, self._grads.offsets)

    def forward(self, x):
        """The model's output for the device batch ``x`` (N, in): a view of the last layer's
        buffer, overwritten by the next forward (copy it to keep it; see :meth:`predict`)."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward  # model(x), as in PyTorch and Keras

    def parameters(self):
        """Every parameter array (:attr:`params`), for an optimizer: ``AdamW(model.parameters(),
        model.grads, backend=be)``."""
        return self.params

    def train(self, mode: bool = True):
        """Training mode (the default) for every layer, or evaluation mode with ``mode=False``;
        returns the model."""
        for layer in self.layers:
            layer.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode (what :func:`gpunn.evaluate` and :meth:`predict` run in); returns the model."""
        return self.train(False)

    @property
    def training(self) -> bool:
        return all(layer.training for layer in self.layers)

    def predict(self, x, batch_size=1000):
        """The class index (argmax of the output, first on ties) of each row of ``x``, on the host.

        x: one input of shape (in,) or a batch (N, in), a host (NumPy) or device array of
        numbers (copied to the backend's dtype where it is not already).  Returns an np.int64
        array of shape (N,), or one np.int64 for one input: the caller's own, unlike
        :meth:`forward`'s output.  Runs ``batch_size`` rows at a time, so the buffers stay that size."""
        where, width, be = "Sequential.predict", self.in_features, self.backend
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
        try:
            x = be.asarray(x, be.dtype)
        except (TypeError, ValueError) as exc:
            raise ShapeError(f"{where}: x must be an array of numbers ({exc})") from None
        if x.ndim not in (1, 2) or x.shape[-1] != width:
            raise ShapeError(f"{where}: expected one input of shape ({width},) or a batch of shape "
                             f"(N, {width}), got shape {tuple(x.shape)}")
        rows = x.reshape(1, width) if x.ndim == 1 else x
        classes = np.empty(rows.shape[0], np.int64)
        with self.evaluating():
            for start in range(0, rows.shape[0], batch_size):
                stop = min(start + batch_size, rows.shape[0])
                classes[start:stop] = be.to_numpy(self.forward(rows[start:stop])).argmax(axis=1)
        return classes[0] if x.ndim == 1 else classes

    @contextlib.contextmanager
    def evaluating(self):
        """A context in evaluation mode; each layer's mode is put back after it."""
        modes = [layer.training for layer in self.layers]
        self.eval()
        try:
            yield self
        finally:
            for layer, mode in zip(self.layers, modes):
                layer.training = mode

    def backward(self, dy, output_bias_grad_done=False):
        """The chain rule, last layer first; ``output_bias_grad_done``: the last layer's db was
        already written (into :meth:`output_bias_grad`, by the loss), so it skips its own."""
        if output_bias_grad_done and self.output_bias_grad() is None:
            raise ValueError(f"{self.layers[-1]}: its bias gradient is not dy's row sum (not an identity Dense layer)")
        done = output_bias_grad_done  # dy is the pre-activation gradient of the layer next in line
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if type(layer) is not Dense:
                dy, done = layer.backward(dy), False
                continue
            below = self.layers[i - 1] if i > 0 and type(self.layers[i - 1]) is Dense else None
            folded = {**({"bias_grad_done": True} if done else {}), **({"below": below} if below else {})}
            dy, done = layer.backward(dy, **folded), below is not None
        return dy

    def output_bias_grad(self):
        """The last layer's bias gradient where it is the loss gradient's row sum (a Dense layer with
        no activation, whose output is the loss's input): a loss that sums its gradient anyway
        (softmax-cross-entropy's ``bias_grad``) writes it there, and the layer skips a kernel.
        None otherwise."""
        last = self.layers[-1]
        if type(last) is Dense and last.activation == "identity":
            return last.db
        return None

    def config(self):
        return [layer.config() for layer in self.layers]

    def num_parameters(self):
        return sum(int(np.prod(p.shape)) for p in self.params)


def mlp(sizes, activation="relu", output_activation="identity", *, backend=None, seed=0, dropout=0.0):
    """A multilayer perceptron ``sizes[0] → … → sizes[-1]`` of fused Dense layers, with a
    ``Dropout(dropout)`` after each hidden layer when ``dropout`` > 0 (each its own seed, from ``seed``).

    ``mlp([784, 16, 16, 10], "sigmoid", "sigmoid")`` is the primer's network;
    ``mlp([784, 10])`` is softmax regression when trained with cross-entropy."""
    if len(sizes) < 2:
        raise ValueError(f"mlp: needs at least input and output sizes, got {sizes!r}")
    backend = get_backend(backend)
    rng = np.random.default_rng(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        act = output_activation if last else activation
        if act == "softmax":
            layers += [Dense(a, b, "identity", backend=backend, rng=rng), Softmax(b, backend=backend)]
        else:
            layers.append(Dense(a, b, act, backend=backend, rng=rng))
        if dropout and not last:
            layers.append(Dropout(b, dropout, (int(seed) * 1_000_003 + i) % 2**32, backend=backend))
    return Sequential(layers)


def config_shapes(config) -> list[tuple[int, ...]]:
    """The parameter shapes, layer by layer, of the model that ``config`` describes, found
    without building it; ValueError naming the layer and the field for anything else but a
    list of layer records gpunn knows, with positive integer sizes and known activations.
    (A configuration read from a file is checked here before any memory is given to it.)"""
    if not isinstance(config, list) or not config:
        raise ValueError(f"a model configuration is a non-empty list of layers, not {type(config).__name__}")
    shapes = []
    for i, c in enumerate(config):
        kind = c.get("type") if isinstance(c, dict) else None
        if kind not in LAYER_TYPES:
            raise ValueError(f"layer {i}: unknown layer type {kind!r} (a layer of your own: gpunn.layers.register_layer)")
        if kind not in BUILTIN_LAYERS:  # a registered layer of the user's: its shapes from building it
            shapes += [tuple(p.shape) for p in _build(LAYER_TYPES[kind], c, i, get_backend("numpy")).params]
            continue
        fields = {"Dense": ("in", "out", "activation"), "Dropout": ("width", "p", "seed")}.get(kind, ("width",))
        if set(c) != {"type", *fields}:
            raise ValueError(f"layer {i}: a {kind} layer has the fields {', '.join(fields)}, not {sorted(set(c) - {'type'})}")
        for f in fields:
            if f in ("in", "out", "width") and not COUNT.ok(c[f]):
                raise ValueError(f"layer {i}: {kind} {f} must be a positive integer, not {c[f]!r}")
        if kind == "Dropout":
            for f, rule in (("p", DROP_PROBABILITY), ("seed", SEED32)):
                if not rule.ok(c[f]):
                    raise ValueError(f"layer {i}: Dropout {f} must be {rule.what}, not {c[f]!r}")
        if kind == "Dense":
            if c["activation"] not in ACTIVATIONS:
                raise ValueError(f"layer {i}: unknown activation {c['activation']!r}; expected one of {', '.join(ACTIVATIONS)}")
            shapes += [(int(c["in"]), int(c["out"])), (int(c["out"]),)]
    return shapes


def _build(cls, c, i, backend):
    try:
        return cls(**{k: v for k, v in c.items() if k != "type"}, backend=backend)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"layer {i}: {cls.__name__}({', '.join(k for k in c if k != 'type')}): {exc}") from None


def from_config(config, *, backend=None):
    """Rebuild a model from ``Sequential.config()`` (weights initialised; load them after)."""
    config_shapes(config)
    backend = get_backend(backend)
    layers = []
    for c in config:
        if c["type"] == "Dense":
            layers.append(Dense(c["in"], c["out"], c["activation"], backend=backend))
        elif c["type"] == "Dropout":
            layers.append(Dropout(c["width"], c["p"], c["seed"], backend=backend))
        elif c["type"] not in BUILTIN_LAYERS:
            layers.append(_build(LAYER_TYPES[c["type"]], c, len(layers), backend))
        else:
            layers.append(LAYER_TYPES[c["type"]](c["width"], backend=backend))
    return Sequential(layers)
