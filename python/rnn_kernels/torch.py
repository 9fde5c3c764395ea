"""Drop-in replacements of ``torch.nn.LSTM``, ``torch.nn.GRU`` and ``torch.nn.RNN`` on rnn-kernels.

    import rnn_kernels.torch as rkt
    lstm = rkt.LSTM(512, 512, num_layers=2, batch_first=True)   # instead of torch.nn.LSTM(...)

The modules take torch.nn's constructor arguments (plus the keyword-only ``backend`` and
``threads``, and the library's cell options below), have torch.nn's parameter names and shapes
(``load_state_dict`` works both ways), initialise like torch.nn (the same weights for the same
``torch.manual_seed``), accept padded tensors (time-major or ``batch_first``), unbatched 2-D
input and ``PackedSequence``, and return what torch.nn returns: ``(output, (h_n, c_n))`` for
LSTM, ``(output, h_n)`` for GRU and RNN.
Under autograd the forward fills a reserve and ``loss.backward()`` runs the library's fused
backpropagation through time; any torch optimiser then updates the parameters. CPU tensors of
float32 (backend ``"cpu"``, the SIMD kernels, or ``"reference"``) or float64 (``"reference"``).

How the weights reach the library. The parameters are views into one flat tensor in the
library's layout (torch's ``state_dict()`` order), handed to the native model without a copy.
Before each call the module compares the version counters of that tensor and of every parameter
with those of its last call (an optimiser step, ``load_state_dict`` or any in-place change bumps
them) and only then repacks the library's weights (``module._refreshes`` counts the repacks). A
parameter of the module's own whose data was replaced (``p.data = ...``, ``.double()``,
``load_state_dict(assign=True)``) is copied into the flat tensor and made a view of it again;
another tensor in a parameter's place (``torch.func.functional_call``) serves that call alone, from
a scratch copy, and leaves the module's weights as they were. In-place changes that torch does not
count (through ``p.data`` or a NumPy view) are not seen: call ``flatten_parameters(force=True)``
after them.

Weights changed between a forward and its backward. The backward computes the gradients of the
weights that forward used, however the parameters changed in between (an optimiser step between
micro-batches, a later forward with new weights): the reserve of each training forward keeps
the packed weights it ran with (a repack while it does writes a new plan instead of the shared
one) until autograd frees the graph's saved tensors. (torch.nn raises instead: a tensor saved
for backward was modified in place.)

Reserves. A training forward takes a reserve (the activations its backward needs) from the
module's pool of free ones; the reserve goes back to the pool when autograd frees the graph's
saved tensors: after ``backward()``, or with ``retain_graph=True`` once the graph itself is
freed, so a retained graph can run its backward again.

The library's cell options, keyword-only, with ``rnn_kernels.Config``'s names and defaults
(each module takes those of its cell; the library's checks raise ``ValueError`` naming the
argument):

- ``direction=None``: ``"forward"``, ``"bidirectional"`` or ``"reverse"`` (one direction run from
  the last step back: ``h_n`` has ``num_layers`` entries, the tensors unsuffixed).
  ``bidirectional=True`` is ``direction="bidirectional"``; given both, they must agree.
- ``merge="concat"``: ``"sum"`` adds a bidirectional layer's two outputs (``output`` has ``H``,
  or ``proj_size``, features instead of twice as many; the next layer's input is as wide).
- ``gate_clip=None``: every gate pre-activation clipped to ``[-gate_clip, gate_clip]`` (ONNX).
- LSTM: ``peephole=False`` (parameters ``weight_peephole_l{k}[_reverse]`` ``[3, H]``, rows i, f,
  o), ``input_forget=False`` (``f = 1 - i``), ``zoneout_cell=0.0``.
- GRU: ``linear_before_reset=True`` (``False``: the reset gate before the recurrent matmul, Cho
  et al. 2014).
- LSTM, GRU: ``layer_norm=False`` (Haste's layer-normalised cells: gains ``weight_ln_ih_l{k}``,
  ``weight_ln_hh_l{k}`` ``[G*H]`` and, LSTM, ``weight_ln_c_l{k}``, ``bias_ln_c_l{k}`` ``[H]``).
- Regularisers, probabilities in ``[0, 1)``: ``zoneout=0.0`` (of ``h``; and LSTM's
  ``zoneout_cell``, of ``c``), ``recurrent_dropout=0.0`` (variational, of the state entering
  the recurrent product), ``input_dropout=0.0`` (variational, of every layer's input).

Their parameters are module parameters like the others (in the library's flat layout and
``state_dict()``); ``reset_parameters`` initialises the peepholes like the weights and, as the
library's ``Params::init_uniform``, Haste and ``torch.nn.LayerNorm`` do, the layer-norm gains to
1 and ``bias_ln_c`` to 0 without drawing from the generator (the other tensors get the same
values with and without ``layer_norm``).

Regularisers. Dropout between layers (``num_layers > 1``), zoneout, recurrent and input dropout
apply in training mode: the library draws their masks from one seed taken from torch's default
generator (``torch.randint``) at each call, so ``torch.manual_seed`` makes a run reproducible,
but the masks are not torch.nn's (the same seed drops other units). Without autograd, training
mode applies them too (as torch.nn does). Eval mode applies none of the masks: it is the
library's inference, which ignores dropout and computes zoneout's expectation
``z*prev + (1-z)*new`` at every step. Under autograd in eval mode a module runs a second native
model, made at its first use, without the regularisers (its training forward is then the
inference forward, to the bit), except with zoneout: the library's training forward always draws
zoneout's masks and its backward has no expectation, so an eval-mode forward with ``zoneout`` or
``zoneout_cell`` is the inference (the expectation, the same bits as under ``torch.no_grad()``)
and a backward through it raises ``RuntimeError`` (train in training mode, evaluate under
``torch.no_grad()``).

Threads: ``threads=None`` follows ``torch.get_num_threads()`` at every call (so
``torch.set_num_threads`` applies); the results are the same bits for any thread count.

Errors in the arguments are ``ValueError`` or ``TypeError`` naming the argument (where torch.nn
raises ``RuntimeError`` for a wrong input or hidden state size, these raise ``ValueError``).
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence

from . import Config, Model

__all__ = ["RNNBase", "LSTM", "GRU", "RNN"]

_LIB_MODES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}
_BACKENDS = ("cpu", "reference")
# The library's cell options (rnn_kernels.Config's keyword-only arguments) and their defaults.
_OPTIONS = {
    "direction": None,
    "merge": "concat",
    "peephole": False,
    "gate_clip": None,
    "input_forget": False,
    "linear_before_reset": True,
    "layer_norm": False,
    "zoneout": 0.0,
    "zoneout_cell": 0.0,
    "recurrent_dropout": 0.0,
    "input_dropout": 0.0,
}
# The options that draw masks in a training forward (with dropout between layers).
_REGULARISERS = ("zoneout", "zoneout_cell", "recurrent_dropout", "input_dropout")
# Free reserves a module keeps for reuse (more are dropped when their graphs are freed).
_POOL_MAX = 4


def _np(t):
    """A C-contiguous NumPy view of a CPU tensor (a copy only when it is not contiguous)."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return t.numpy()


def _np_opt(t):
    return None if t is None else _np(t)


class _Lease:
    """A training forward's hold on its reserve, dropped when autograd frees the graph's saved
    tensors: the reserve lets go of the weights it was computed with and goes back to the pool."""

    __slots__ = ("reserve", "pool", "anchor")

    def __init__(self, reserve, pool, anchor):
        self.reserve, self.pool, self.anchor = reserve, pool, anchor

    def __del__(self):
        reserve, self.reserve = self.reserve, None
        if reserve is not None:
            _give_back(reserve, self.pool)


def _give_back(reserve, pool):
    """Releases a reserve's hold on its weights and keeps it for reuse (up to _POOL_MAX)."""
    try:
        reserve.release()
    except Exception:  # noqa: BLE001 -- at interpreter shutdown; the reserve is dropped
        return
    if len(pool) < _POOL_MAX:
        pool.append(reserve)


class _Run:
    """What one call hands the autograd function: the native model and the call's arguments."""

    __slots__ = ("model", "lengths", "seed", "threads", "pool", "specs", "lstm")

    def __init__(self, model, lengths, seed, threads, pool, specs, lstm):
        self.model, self.lengths, self.seed, self.threads = model, lengths, seed, threads
        self.pool, self.specs, self.lstm = pool, specs, lstm


def _take(pool):
    return pool.pop() if pool else None


class _RnnFunction(torch.autograd.Function):
    """x, h0, c0 and every parameter in; y, h_n (and c_n) out. The forward fills a reserve, the
    backward runs the library's BPTT with it and hands each parameter a view of one flat
    gradient tensor."""

    @staticmethod
    def forward(ctx, run, x, h0, c0, *params):
        reserve = _take(run.pool)
        try:
            y, hn, cn, reserve = run.model.forward_training(
                _np(x), run.lengths, _np_opt(h0), _np_opt(c0), seed=run.seed, reserve=reserve, threads=run.threads
            )
        except BaseException:
            if reserve is not None and not reserve.in_use:
                run.pool.append(reserve)
            raise
        anchor = torch.empty(0)
        # The lease rides on this saved tensor (hooks registered by the caller once autograd has
        # made it a saved variable), so it is dropped when autograd frees the saved tensors.
        ctx.save_for_backward(anchor)
        ctx.lease = _Lease(reserve, run.pool, anchor)
        ctx.run, ctx.reserve = run, reserve
        ctx.set_materialize_grads(False)
        out = (torch.from_numpy(y), torch.from_numpy(hn))
        return out + (torch.from_numpy(cn),) if run.lstm else out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dhn, dcn=None):
        ctx.saved_tensors  # raises if the graph was freed (a second backward without retain_graph)
        run = ctx.run
        need = ctx.needs_input_grad  # (run, x, h0, c0, *params)
        need_dx, need_dstate = need[1], need[2] or need[3]
        need_dparams = any(need[4:])
        nparams = len(need) - 4
        if (dy is None and dhn is None and dcn is None) or not (need_dx or need_dstate or need_dparams):
            return (None,) * (4 + nparams)
        dx, dh0, dc0, dparams = run.model.backward(
            ctx.reserve,
            _np_opt(dy),
            _np_opt(dhn),
            _np_opt(dcn),
            need_dx=need_dx,
            need_dstate=need_dstate,
            need_dparams=need_dparams,
            threads=run.threads,
        )
        dx = torch.from_numpy(dx) if need_dx else None
        dh0 = torch.from_numpy(dh0) if need[2] else None
        dc0 = torch.from_numpy(dc0) if need[3] and dc0 is not None else None
        if need_dparams:
            flat = torch.from_numpy(dparams)
            grads = [flat[o : o + n].view(shape) if want else None for (_, shape, o, n), want in zip(run.specs, need[4:])]
        else:
            grads = [None] * nparams
        return (None, dx, dh0, dc0, *grads)


class _InferenceFunction(torch.autograd.Function):
    """An eval-mode forward with zoneout under autograd: the library's inference (zoneout's
    expectation), which has no backward in the library; a backward through it raises."""

    @staticmethod
    def forward(ctx, run, x, h0, c0, *params):
        y, hn, cn = run.model.forward(_np(x), run.lengths, _np_opt(h0), _np_opt(c0), threads=run.threads)
        out = (torch.from_numpy(y), torch.from_numpy(hn))
        return out + (torch.from_numpy(cn),) if run.lstm else out

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "rnn_kernels.torch: backward through an eval-mode forward of a module with zoneout: eval mode computes zoneout's "
            "expectation, which the library has as inference only (its training forward draws zoneout's masks); call .train() "
            "before a forward to differentiate, or run eval-mode forwards under torch.no_grad()"
        )


def _lease_on_saved_tensor(output):
    """Moves the lease of the autograd node behind `output` onto its saved tensor."""
    node = output.grad_fn
    lease = node.lease
    try:
        node._raw_saved_tensors[0].register_hooks(lambda _t, lease=lease: lease, lambda lease: lease.anchor)
    except (RuntimeError, AttributeError, IndexError):
        # Saved-tensor hooks of the caller's own (torch.autograd.graph.saved_tensors_hooks,
        # save_on_cpu) are in place: the lease stays on the node and goes with the graph.
        return
    del node.lease


class RNNBase(nn.Module):
    """The module behind LSTM, GRU and RNN (torch.nn.RNNBase's arguments and attributes), with
    the library's cell options as keyword-only arguments and attributes: ``direction``,
    ``merge``, ``peephole``, ``gate_clip``, ``input_forget``, ``linear_before_reset``,
    ``layer_norm``, ``zoneout``, ``zoneout_cell``, ``recurrent_dropout``, ``input_dropout``
    (``rnn_kernels.Config``'s; the library refuses those the cell does not take)."""

    __constants__ = ["mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size", *_OPTIONS]

    def __init__(
        self,
        mode,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        proj_size=0,
        device=None,
        dtype=None,
        *,
        backend=None,
        threads=None,
        direction=None,
        merge="concat",
        peephole=False,
        gate_clip=None,
        input_forget=False,
        linear_before_reset=True,
        layer_norm=False,
        zoneout=0.0,
        zoneout_cell=0.0,
        recurrent_dropout=0.0,
        input_dropout=0.0,
    ):
        super().__init__()
        if mode not in _LIB_MODES:
            raise ValueError(f"Unrecognized RNN mode: {mode}")
        # torch.nn.RNNBase's checks, with its messages.
        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        for name, value in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers), ("proj_size", proj_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if proj_size and mode != "LSTM":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if backend is not None and backend not in _BACKENDS:
            raise ValueError(f"backend must be None, 'cpu' or 'reference', got {backend!r}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be None or a positive int, got {threads!r}")
        # The options' types, with the argument in the message (the library checks the values).
        for name, value in (("peephole", peephole), ("input_forget", input_forget), ("linear_before_reset", linear_before_reset), ("layer_norm", layer_norm)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
        for name, value in (("zoneout", zoneout), ("zoneout_cell", zoneout_cell), ("recurrent_dropout", recurrent_dropout), ("input_dropout", input_dropout)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"{name} should be a number in [0, 1), got: {type(value).__name__}")
        if gate_clip is not None and (not isinstance(gate_clip, numbers.Real) or isinstance(gate_clip, bool)):
            raise TypeError(f"gate_clip should be None or a positive number, got: {type(gate_clip).__name__}")
        if direction is not None and not isinstance(direction, str):
            raise TypeError(f"direction should be None or a str, got: {type(direction).__name__}")
        if not isinstance(merge, str):
            raise TypeError(f"merge should be a str, got: {type(merge).__name__}")
        probe = torch.empty(0, device=device, dtype=dtype)  # torch's defaults for None
        if probe.device.type != "cpu":
            raise ValueError(f"device must be the CPU (rnn_kernels.torch computes on the CPU only), got {probe.device}")
        if probe.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {probe.dtype}")
        if backend == "cpu" and probe.dtype != torch.float32:
            raise TypeError(f"dtype must be torch.float32 for backend 'cpu' (float64 runs on backend 'reference'), got {probe.dtype}")

        options = dict(
            direction=direction,
            merge=merge,
            peephole=peephole,
            gate_clip=gate_clip,
            input_forget=input_forget,
            linear_before_reset=linear_before_reset,
            layer_norm=layer_norm,
            zoneout=zoneout,
            zoneout_cell=zoneout_cell,
            recurrent_dropout=recurrent_dropout,
            input_dropout=input_dropout,
        )
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.proj_size = proj_size
        self.backend = backend
        self.threads = threads

        # The library checks the options (ValueError or TypeError naming the argument).
        # bidirectional=False leaves the direction to `direction`; True must agree with it.
        self._config = self._make_config(bidirectional or None, self.dropout, options)
        config = self._config
        self.bidirectional = config.bidirectional
        for name in _OPTIONS:  # the configuration's values (direction, merge: its spelling)
            setattr(self, name, getattr(config, name))
        # Whether a training forward draws masks.
        self._masked = (self.dropout > 0 and num_layers > 1) or any(getattr(config, name) > 0 for name in _REGULARISERS)
        # Without the regularisers, for a training forward in eval mode (the configuration's draws
        # masks): its training forward is the inference forward.
        self._config_no_masks = None
        if self._masked:
            self._config_no_masks = self._make_config(config.bidirectional or None, 0.0, dict(options, **{name: 0.0 for name in _REGULARISERS}))
        # (name, shape, offset, numel) in the flat layout, which is torch's state_dict() order.
        self._specs = [(name, tuple(shape), int(offset), math.prod(shape)) for name, shape, offset in self._config.param_specs()]
        self._flat_weights_names = [s[0] for s in self._specs]
        self._param_count = int(self._config.param_count)
        self._flat = torch.empty(self._param_count, dtype=probe.dtype)
        self._owned = {name: None for name in self._flat_weights_names}
        for name, shape, offset, n in self._specs:
            self.register_parameter(name, nn.Parameter(self._flat[offset : offset + n].view(shape)))
        self._init_native_state()
        self.reset_parameters()

    def _make_config(self, bidirectional, dropout, options):
        return Config(
            _LIB_MODES[self.mode],
            self.input_size,
            self.hidden_size,
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            bidirectional=bidirectional,
            proj_size=self.proj_size,
            dropout=dropout,
            **options,
        )

    def _init_native_state(self):
        # The native models, made at their first call: [model, dtype, the version counters at
        # its last repack], of the configuration and (with regularisers) of the one without them.
        self._models = [None, None]
        self._pool = []  # free reserves
        self._refreshes = 0  # repacks of the weights (Model.update_params) after the first
        self._reflattens = 0  # parameters copied back into the flat tensor

    # torch.nn.RNNBase's API -----------------------------------------------------------------

    def reset_parameters(self):
        """torch.nn's initialisation: every weight and bias (the peepholes too) uniform in
        ±1/sqrt(hidden_size), drawn from torch's default generator in torch.nn's order (the same
        weights for the same seed). The layer-norm tensors are set as the library's
        ``Params::init_uniform``, Haste and ``torch.nn.LayerNorm`` set them, without drawing: the
        gains ``weight_ln_*`` to 1, ``bias_ln_c_*`` to 0 (so the other tensors are the same with
        and without ``layer_norm``)."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for name, weight in self.named_parameters():
            if name.startswith("weight_ln_"):
                nn.init.ones_(weight)
            elif name.startswith("bias_ln_"):
                nn.init.zeros_(weight)
            else:
                nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self, force=False):
        """Makes every parameter a view of the flat weight tensor again (copying in any that was
        replaced); with `force`, also repacks the library's weights at the next call (after a
        change that bypassed the version counters). Called by every forward."""
        self._sync_flat()
        if force:
            for state in self._models:
                if state is not None:
                    state[2] = None

    @property
    def _flat_weights(self):
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self):
        per = len(self._specs) // (self.num_layers * self._config.num_directions)
        ws = self._flat_weights
        return [ws[i : i + per] for i in range(0, len(ws), per)]

    def extra_repr(self):
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        if self.direction == "reverse":
            s += ", direction={direction!r}"
        if self.merge != "concat":
            s += ", merge={merge!r}"
        for name in ("peephole", "input_forget", "layer_norm"):
            if self.__dict__[name]:
                s += f", {name}=True"
        if not self.linear_before_reset:
            s += ", linear_before_reset=False"
        for name in ("gate_clip", "zoneout", "zoneout_cell", "recurrent_dropout", "input_dropout"):
            if self.__dict__[name]:
                s += f", {name}={{{name}}}"
        if self.backend is not None:
            s += ", backend={backend!r}"
        if self.threads is not None:
            s += ", threads={threads}"
        return s.format(**self.__dict__)

    def __getstate__(self):
        state = self.__dict__.copy()
        # The native model and reserves are not picklable; the flat tensor is rebuilt from the
        # parameters (a copy keeps the parameters, not their sharing of one tensor).
        for k in ("_models", "_pool"):
            state.pop(k, None)
        state["_flat"] = None
        return state

    def __setstate__(self, state):
        if "_config_no_masks" not in state:  # pickled before the cell options
            state = dict(state)
            state["_config_no_masks"] = state.pop("_config_no_dropout", None)
            state["_masked"] = state["_config_no_masks"] is not None
            for name in _OPTIONS:
                state.setdefault(name, getattr(state["_config"], name))
        super().__setstate__(state)
        refreshes, reflattens = state.get("_refreshes", 0), state.get("_reflattens", 0)
        self._init_native_state()
        self._refreshes, self._reflattens = refreshes, reflattens

    # The weights ------------------------------------------------------------------------------

    def register_parameter(self, name, param):
        super().register_parameter(name, param)
        owned = self.__dict__.get("_owned")
        if owned is not None and name in owned and isinstance(param, nn.Parameter):
            owned[name] = param  # module.weight_ih_l0 = nn.Parameter(...), load_state_dict(assign=True)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        for name in self._owned:  # .double(), .to(...): new Parameters where torch makes them
            p = self._parameters.get(name)
            if isinstance(p, nn.Parameter):
                self._owned[name] = p
        return out

    def _sync_flat(self):
        """The current parameter tensors and the flat weights to hand the library.

        Each parameter of the module's own (its Parameter objects, also those it was given by
        assignment, load_state_dict(assign=True) or .to()) is kept a view of the flat tensor: one
        that is not (its data replaced) is copied in and viewed again. Another tensor in a
        parameter's place (torch.func.functional_call) is left alone: its values go to a scratch
        copy of the flat tensor for this call only (returned as the second value, else None)."""
        params = self._flat_weights
        dtype = params[0].dtype if isinstance(params[0], torch.Tensor) else None
        for name, p in zip(self._flat_weights_names, params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"parameter {name} must be a tensor, got {type(p).__name__}")
            if p.device.type != "cpu":
                raise ValueError(f"parameter {name} is on {p.device}: rnn_kernels.torch computes on the CPU only")
            if p.dtype != dtype:
                raise TypeError(f"parameter {name} has dtype {p.dtype}, the others {dtype}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"the parameters must be float32 or float64, got {dtype}")
        flat = self._flat
        fresh = flat is None or flat.dtype != dtype
        if fresh:
            flat = torch.empty(self._param_count, dtype=dtype)
        base, item = flat.data_ptr(), flat.element_size()
        stale = []
        for (name, shape, offset, n), p in zip(self._specs, params):
            if fresh or p.data_ptr() != base + offset * item or not p.is_contiguous() or tuple(p.shape) != shape:
                if tuple(p.shape) != shape:
                    raise ValueError(f"parameter {name} has shape {tuple(p.shape)}, expected {shape}")
                stale.append((name, shape, offset, n, p))
        if not stale:
            return params, None
        foreign = []
        with torch.no_grad():
            for name, shape, offset, n, p in stale:
                if p is self._owned.get(name):
                    flat[offset : offset + n].copy_(p.reshape(-1))
                    p.data = flat[offset : offset + n].view(shape)
                else:
                    if fresh:  # nothing else to fill the new flat tensor with
                        flat[offset : offset + n].copy_(p.reshape(-1))
                    foreign.append((offset, n, p))
            if fresh or len(foreign) < len(stale):
                self._flat = flat
                self._reflattens += 1
            scratch = None
            if foreign:
                scratch = flat.clone()
                for offset, n, p in foreign:
                    scratch[offset : offset + n].copy_(p.reshape(-1))
        return params, scratch

    def _native(self, params, scratch, variant):
        """The native model of `variant` (0: the configuration's; 1: without the regularisers,
        for a training forward in eval mode), its weights brought up to date with the parameters."""
        flat = self._flat
        source = flat if scratch is None else scratch
        seen = (flat._version, *(p._version for p in params))
        state = self._models[variant]
        if state is None or state[1] != flat.dtype:
            backend = self.backend or ("cpu" if flat.dtype == torch.float32 else "reference")
            if backend == "cpu" and flat.dtype != torch.float32:
                raise TypeError(f"backend 'cpu' computes in float32, the parameters are {flat.dtype} (use backend 'reference')")
            config = self._config if variant == 0 else self._config_no_masks
            state = self._models[variant] = [Model(config, _np(source), backend=backend, threads=self.threads), flat.dtype, None]
        elif scratch is not None or seen != state[2]:
            state[0].update_params(_np(source))
            self._refreshes += 1
        # After a scratch copy the next call repacks the module's own weights.
        state[2] = None if scratch is not None else seen
        return state[0]

    # The forward --------------------------------------------------------------------------------

    def _hidden_shapes(self, batch):
        d = self._config.num_directions
        h = (self.num_layers * d, batch, self.proj_size or self.hidden_size)
        return h, (self.num_layers * d, batch, self.hidden_size)

    def _check_tensor(self, name, t, dtype):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device}: rnn_kernels.torch computes on the CPU only")
        if t.dtype != dtype:
            raise ValueError(
                f"{name} dtype ({t.dtype}) does not match weight dtype ({dtype}). Convert it: {name}.to({dtype}), "
                f"or convert the model: model.to({t.dtype})"
            )

    def forward(self, input, hx=None):
        params, scratch = self._sync_flat()
        dtype = self._flat.dtype
        lstm = self.mode == "LSTM"
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._check_tensor("input", data, dtype)
            if data.dim() != 2:
                raise ValueError(f"input (a PackedSequence) must have 2-D data, got {data.dim()}-D")
            batch = int(batch_sizes[0])
            steps = int(batch_sizes.numel())
            x, lengths = _VF._pad_packed_sequence(data, batch_sizes, self.batch_first, 0.0, steps)
            lengths_np = lengths.numpy()
            batched = True
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input must be a torch.Tensor or a PackedSequence, got {type(input).__name__}")
            self._check_tensor("input", input, dtype)
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(0 if self.batch_first else 1)
            batch = x.size(0 if self.batch_first else 1)
            lengths_np = None
            sorted_indices = unsorted_indices = None
        if x.size(-1) != self.input_size:
            raise ValueError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.size(-1)}")

        h_shape, c_shape = self._hidden_shapes(batch)
        h0 = c0 = None
        if hx is not None:
            if lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"hx must be a tuple (h_0, c_0) for LSTM, got {type(hx).__name__}")
                h0, c0 = hx
                self._check_tensor("hx[0]", h0, dtype)
                self._check_tensor("hx[1]", c0, dtype)
            else:
                h0 = hx
                self._check_tensor("hx", h0, dtype)
            want = 3 if batched else 2
            for sname, s in ([("hx[0]", h0), ("hx[1]", c0)] if lstm else [("hx", h0)]):
                if s.dim() != want:
                    kind = "batched 3-D" if batched else "unbatched 2-D"
                    raise ValueError(f"For {kind} input, {sname} should also be {want}-D but got {s.dim()}-D tensor")
            if not batched:
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if c0 is not None else None
            for sname, s, expected in [("hx[0]" if lstm else "hx", h0, h_shape)] + ([("hx[1]", c0, c_shape)] if lstm else []):
                if tuple(s.shape) != expected:
                    raise ValueError(f"Expected {sname} size {expected}, got {list(s.shape)}")
            if sorted_indices is not None:
                h0 = h0.index_select(1, sorted_indices)
                c0 = c0.index_select(1, sorted_indices) if c0 is not None else None

        y, hn, cn = self._run(params, scratch, x, lengths_np, h0, c0, lstm)

        if packed:
            out, _ = _VF._pack_padded_sequence(y, lengths, self.batch_first)
            output = PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                hn = hn.index_select(1, unsorted_indices)
                cn = cn.index_select(1, unsorted_indices) if cn is not None else None
        else:
            output = y if batched else y.squeeze(0 if self.batch_first else 1)
            if not batched:
                hn = hn.squeeze(1)
                cn = cn.squeeze(1) if cn is not None else None
        return (output, (hn, cn)) if lstm else (output, hn)

    def _threads(self):
        return self.threads if self.threads is not None else torch.get_num_threads()

    def _run(self, params, scratch, x, lengths, h0, c0, lstm):
        threads = self._threads()
        masks = self.training and self._masked
        seed = int(torch.randint(0, 2**62, (1,)).item()) if masks else None
        grad = torch.is_grad_enabled() and (
            x.requires_grad
            or (h0 is not None and h0.requires_grad)
            or (c0 is not None and c0.requires_grad)
            or any(p.requires_grad for p in params)
        )
        if grad:
            if not masks and (self.zoneout > 0 or self.zoneout_cell > 0):
                # Eval mode with zoneout: its expectation is the library's inference alone.
                run = _Run(self._native(params, scratch, 0), lengths, None, threads, None, self._specs, lstm)
                outs = _InferenceFunction.apply(run, x, h0, c0, *params)
                return outs[0], outs[1], (outs[2] if lstm else None)
            variant = 1 if self._config_no_masks is not None and not masks else 0
            model = self._native(params, scratch, variant)
            run = _Run(model, lengths, seed, threads, self._pool, self._specs, lstm)
            outs = _RnnFunction.apply(run, x, h0, c0, *params)
            _lease_on_saved_tensor(outs[0])
            return outs[0], outs[1], (outs[2] if lstm else None)
        model = self._native(params, scratch, 0)
        if not masks:
            y, hn, cn = model.forward(_np(x), lengths, _np_opt(h0), _np_opt(c0), threads=threads)
        else:
            # Training mode without autograd: the masks apply, and the reserve is free right away.
            reserve = _take(self._pool)
            y, hn, cn, reserve = model.forward_training(_np(x), lengths, _np_opt(h0), _np_opt(c0), seed=seed, reserve=reserve, threads=threads)
            _give_back(reserve, self._pool)
        return torch.from_numpy(y), torch.from_numpy(hn), (torch.from_numpy(cn) if cn is not None else None)


class LSTM(RNNBase):
    """torch.nn.LSTM on rnn-kernels: LSTM(input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
    backend=None, threads=None, direction=None, merge="concat", peephole=False, gate_clip=None,
    input_forget=False, layer_norm=False, zoneout=0.0, zoneout_cell=0.0, recurrent_dropout=0.0,
    input_dropout=0.0). Returns ``(output, (h_n, c_n))``.

    The keyword-only cell options are ``rnn_kernels.Config``'s (the module docstring says what
    each does): ``peephole`` adds ``weight_peephole_l{k}`` ``[3, H]`` (initialised like the
    weights), ``layer_norm`` the gains ``weight_ln_ih_l{k}``, ``weight_ln_hh_l{k}`` ``[4H]``,
    ``weight_ln_c_l{k}`` ``[H]`` (initialised to 1) and ``bias_ln_c_l{k}`` ``[H]`` (to 0);
    ``zoneout``, ``zoneout_cell``, ``recurrent_dropout`` and ``input_dropout`` apply in training
    mode only (eval mode: zoneout's expectation)."""

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        proj_size=0,
        device=None,
        dtype=None,
        *,
        backend=None,
        threads=None,
        direction=None,
        merge="concat",
        peephole=False,
        gate_clip=None,
        input_forget=False,
        layer_norm=False,
        zoneout=0.0,
        zoneout_cell=0.0,
        recurrent_dropout=0.0,
        input_dropout=0.0,
    ):
        super().__init__(
            "LSTM",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            device,
            dtype,
            backend=backend,
            threads=threads,
            direction=direction,
            merge=merge,
            peephole=peephole,
            gate_clip=gate_clip,
            input_forget=input_forget,
            layer_norm=layer_norm,
            zoneout=zoneout,
            zoneout_cell=zoneout_cell,
            recurrent_dropout=recurrent_dropout,
            input_dropout=input_dropout,
        )


class GRU(RNNBase):
    """torch.nn.GRU on rnn-kernels: GRU(input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend=None,
    threads=None, direction=None, merge="concat", gate_clip=None, linear_before_reset=True,
    layer_norm=False, zoneout=0.0, recurrent_dropout=0.0, input_dropout=0.0). Returns
    ``(output, h_n)``.

    The keyword-only cell options are ``rnn_kernels.Config``'s (the module docstring says what
    each does): ``linear_before_reset=False`` is Cho et al.'s GRU (the reset gate before the
    recurrent matmul; not with ``layer_norm`` or ``recurrent_dropout``); ``layer_norm`` adds the
    gains ``weight_ln_ih_l{k}``, ``weight_ln_hh_l{k}`` ``[3H]`` (initialised to 1); ``zoneout``,
    ``recurrent_dropout`` and ``input_dropout`` apply in training mode only (eval mode: zoneout's
    expectation)."""

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        device=None,
        dtype=None,
        *,
        backend=None,
        threads=None,
        direction=None,
        merge="concat",
        gate_clip=None,
        linear_before_reset=True,
        layer_norm=False,
        zoneout=0.0,
        recurrent_dropout=0.0,
        input_dropout=0.0,
    ):
        super().__init__(
            "GRU",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            0,
            device,
            dtype,
            backend=backend,
            threads=threads,
            direction=direction,
            merge=merge,
            gate_clip=gate_clip,
            linear_before_reset=linear_before_reset,
            layer_norm=layer_norm,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            input_dropout=input_dropout,
        )


class RNN(RNNBase):
    """torch.nn.RNN (Elman) on rnn-kernels: RNN(input_size, hidden_size, num_layers=1,
    nonlinearity='tanh', bias=True, batch_first=False, dropout=0.0, bidirectional=False,
    device=None, dtype=None, *, backend=None, threads=None, direction=None, merge="concat",
    gate_clip=None, zoneout=0.0, recurrent_dropout=0.0, input_dropout=0.0). Returns
    ``(output, h_n)``.

    The keyword-only cell options are ``rnn_kernels.Config``'s (the module docstring says what
    each does); ``zoneout``, ``recurrent_dropout`` and ``input_dropout`` apply in training mode
    only (eval mode: zoneout's expectation)."""

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        nonlinearity="tanh",
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        device=None,
        dtype=None,
        *,
        backend=None,
        threads=None,
        direction=None,
        merge="concat",
        gate_clip=None,
        zoneout=0.0,
        recurrent_dropout=0.0,
        input_dropout=0.0,
    ):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(
            "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            0,
            device,
            dtype,
            backend=backend,
            threads=threads,
            direction=direction,
            merge=merge,
            gate_clip=gate_clip,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            input_dropout=input_dropout,
        )
