"""rnn_kernels.torch with the library's cell options (direction, merge, peephole, gate_clip,
input_forget, linear_before_reset, layer_norm, zoneout, zoneout_cell, recurrent_dropout,
input_dropout).

For each cell and a spread of options (with batch_first, projection, several layers, padded,
packed and unbatched input): the outputs and the gradients of the input, the initial states and
every parameter are the same bits as the NumPy API's (``rk.Model`` of a Config built here from
the same arguments, on the parameters of the module's ``state_dict()`` in ``param_specs()``
order, ``forward_training`` then ``backward`` with the loss's upstream gradients), on the
float64 reference and the float32 CPU backend, one thread each. ``torch.autograd.gradcheck`` in
float64 on the reference backend for a few option sets (the options' own parameters included;
one with the regularisers in training mode, the masks fixed by ``torch.manual_seed``).
``state_dict`` round trips, pickling, ``extra_repr``, the initialisation of the new parameters.
The regularisers: training mode follows ``torch.manual_seed`` (the masks are the library's with
the seed taken from torch's generator), eval mode is the library's inference (zoneout's
expectation) with and without autograd, and a backward through an eval-mode forward with zoneout
raises. Bad arguments raise ValueError or TypeError naming them.
"""

import copy
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is missing; pip install torch to run the PyTorch layer's tests")

from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence  # noqa: E402

import rnn_kernels as rk  # noqa: E402
import rnn_kernels.torch as rkt  # noqa: E402
from conftest import assert_masks_follow_seed  # noqa: E402

I, H, T, B = 4, 5, 5, 3
LENGTHS = [5, 2, 4]  # unsorted
BACKEND = {torch.float64: "reference", torch.float32: "cpu"}
REGULARISERS = ("zoneout", "zoneout_cell", "recurrent_dropout", "input_dropout")


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def module_class(mode):
    return {
        "lstm": (rkt.LSTM, {}),
        "gru": (rkt.GRU, {}),
        "rnn_tanh": (rkt.RNN, {"nonlinearity": "tanh"}),
        "rnn_relu": (rkt.RNN, {"nonlinearity": "relu"}),
    }[mode]


def make(mode, dtype=torch.float64, seed=99, input_size=I, hidden_size=H, **kw):
    cls, extra = module_class(mode)
    torch.manual_seed(seed)
    return cls(input_size, hidden_size, **extra, **kw, dtype=dtype, backend=BACKEND[dtype], threads=1)


def config_of(mode, input_size=I, hidden_size=H, **kw):
    """The NumPy API's configuration of the same arguments, built independently of the module."""
    kw = dict(kw)
    bidirectional = kw.pop("bidirectional", None)
    return rk.Config(mode, input_size, hidden_size, bidirectional=bidirectional or None, **kw)


def flat_params(m, config):
    """The module's state_dict() in the layout of config.param_specs() (names and shapes)."""
    sd = m.state_dict()
    parts = []
    for name, shape, _ in config.param_specs():
        assert tuple(sd[name].shape) == tuple(shape), name
        parts.append(sd[name].reshape(-1).numpy())
    return np.concatenate(parts)


def randn(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


CASES = {
    "lstm-peephole": ("lstm", dict(peephole=True)),
    "lstm-gate_clip": ("lstm", dict(gate_clip=0.5)),
    "lstm-input_forget-2layers": ("lstm", dict(input_forget=True, num_layers=2)),
    "lstm-layer_norm": ("lstm", dict(layer_norm=True)),
    "lstm-layer_norm-peephole-proj-2layers": ("lstm", dict(layer_norm=True, peephole=True, proj_size=3, num_layers=2)),
    "lstm-proj-bidirectional-sum-peephole-clip": ("lstm", dict(proj_size=2, num_layers=2, bidirectional=True, merge="sum", peephole=True, gate_clip=0.7)),
    "lstm-reverse-2layers-batch_first": ("lstm", dict(direction="reverse", num_layers=2, batch_first=True)),
    "lstm-everything": ("lstm", dict(num_layers=2, bidirectional=True, peephole=True, input_forget=True, gate_clip=0.8, layer_norm=True, batch_first=True)),
    "gru-cho-2layers": ("gru", dict(linear_before_reset=False, num_layers=2)),
    "gru-layer_norm-bidirectional": ("gru", dict(layer_norm=True, bidirectional=True)),
    "gru-reverse-batch_first-clip": ("gru", dict(direction="reverse", batch_first=True, gate_clip=0.4)),
    "gru-cho-bidirectional-sum": ("gru", dict(linear_before_reset=False, direction="bidirectional", merge="sum", num_layers=2)),
    "rnn_tanh-bidirectional-sum-batch_first": ("rnn_tanh", dict(num_layers=2, bidirectional=True, merge="sum", batch_first=True)),
    "rnn_relu-reverse-clip": ("rnn_relu", dict(direction="reverse", gate_clip=0.3, num_layers=2)),
}
KINDS = ["padded_hx", "padded", "packed_hx", "unbatched_hx"]


def state_shapes(config, batch):
    lds = config.num_layers * config.num_directions
    return (lds, batch, config.state_size), (lds, batch, config.hidden_size)


def numpy_api(config, params, backend, x, lengths, h0, c0, dy, dhn, dcn, seed=None):
    """A training forward and its backward through the NumPy API (threads=1)."""
    model = rk.Model(config, params, backend=backend, threads=1)
    x, h0, c0, dy, dhn, dcn = (None if a is None else np.ascontiguousarray(a) for a in (x, h0, c0, dy, dhn, dcn))
    y, hn, cn, reserve = model.forward_training(x, lengths=lengths, h0=h0, c0=c0, seed=seed, threads=1)
    dx, dh0, dc0, dparams = model.backward(reserve, dy=dy, dhn=dhn, dcn=dcn, threads=1)
    return (y, hn, cn), (dx, dh0, dc0, dparams)


def parity(mode, kw, kind, dtype, seed=None, train=True):
    """Runs the module on `kind` of input with a weighted-sum loss and the NumPy API on the same
    arguments; asserts the same bits. `seed`: torch.manual_seed before the module's forward (the
    NumPy API gets the seed the module takes from torch's generator)."""
    m = make(mode, dtype, **kw)
    m.train(train)
    config = config_of(mode, **kw)
    lstm = mode == "lstm"
    bf = config.batch_first
    p = flat_params(m, config)
    batched = not kind.startswith("unbatched")
    hs, cs = state_shapes(config, B)
    x = randn(B, T, I, dtype=dtype, seed=1) if bf else randn(T, B, I, dtype=dtype, seed=1)
    h0 = randn(*hs, dtype=dtype, seed=2)
    c0 = randn(*cs, dtype=dtype, seed=3) if lstm else None
    if not batched:
        x = x[0] if bf else x[:, 0]
        h0 = h0[:, 0]
        c0 = c0[:, 0] if lstm else None
    with_hx = kind.endswith("_hx")
    xl = x.clone().requires_grad_()
    h0l = h0.clone().requires_grad_()
    c0l = c0.clone().requires_grad_() if lstm else None
    hx = ((h0l, c0l) if lstm else h0l) if with_hx else None
    inp = xl
    if kind.startswith("packed"):
        inp = pack_padded_sequence(xl, torch.tensor(LENGTHS), batch_first=bf, enforce_sorted=False)
    if seed is not None:
        torch.manual_seed(seed)
    out, state = m(inp) if hx is None else m(inp, hx)
    if seed is not None:  # the module's draw from the same generator state
        torch.manual_seed(seed)
        seed = int(torch.randint(0, 2**62, (1,)).item())
    states = list(state) if lstm else [state]
    y = out.data if isinstance(out, PackedSequence) else out
    g = torch.Generator().manual_seed(7)
    w = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype) for t in [y] + states]
    sum((t * wt).sum() for t, wt in zip([y] + states, w)).backward()

    # The same through the NumPy API.
    npx, nph0, npc0 = x.numpy(), h0.numpy(), (c0.numpy() if lstm else None)
    dy = w[0].numpy()
    dhn = w[1].numpy()
    dcn = w[2].numpy() if lstm else None
    lengths = None
    order = None
    if kind.startswith("packed"):
        # As the module runs it: the batch sorted by length.
        order = out.sorted_indices.numpy()
        lengths = np.array(LENGTHS)[order]
        npx = (npx[order] if bf else npx[:, order]).copy()
        for b, n in enumerate(lengths):  # the module's padding: zeros past each length
            if bf:
                npx[b, n:] = 0
            else:
                npx[n:, b] = 0
        nph0 = nph0[:, order]
        npc0 = npc0[:, order] if lstm else None
        dy = pad_packed_sequence(PackedSequence(w[0], out.batch_sizes), batch_first=bf, total_length=T)[0].numpy()
        dhn = dhn[:, order]
        dcn = dcn[:, order] if lstm else None
    elif not batched:
        npx = npx[None] if bf else npx[:, None]
        nph0, dhn, dy = nph0[:, None], dhn[:, None], (dy[None] if bf else dy[:, None])
        if lstm:
            npc0, dcn = npc0[:, None], dcn[:, None]
    if not with_hx:
        nph0 = npc0 = None
    (ny, nhn, ncn), (ndx, ndh0, ndc0, ndp) = numpy_api(config, p, BACKEND[dtype], npx, lengths, nph0, npc0, dy, dhn, dcn, seed)

    # Shapes follow the options.
    assert y.shape[-1] == config.output_size
    assert states[0].shape[0] == config.num_layers * config.num_directions
    # Outputs.
    if kind.startswith("packed"):
        unsorted = out.unsorted_indices.numpy()
        packed_y = pack_padded_sequence(torch.from_numpy(ny), torch.from_numpy(lengths), batch_first=bf).data.numpy()
        np.testing.assert_array_equal(y.detach().numpy(), packed_y)
        np.testing.assert_array_equal(states[0].detach().numpy(), nhn[:, unsorted])
        if lstm:
            np.testing.assert_array_equal(states[1].detach().numpy(), ncn[:, unsorted])
        np.testing.assert_array_equal((xl.grad[order] if bf else xl.grad[:, order]).numpy(), ndx)
        if with_hx:
            np.testing.assert_array_equal(h0l.grad[:, order].numpy(), ndh0)
            if lstm:
                np.testing.assert_array_equal(c0l.grad[:, order].numpy(), ndc0)
    else:
        squeeze = (lambda a: a) if batched else (lambda a: a[0] if bf else a[:, 0])
        unb = (lambda a: a) if batched else (lambda a: a[:, 0])
        np.testing.assert_array_equal(y.detach().numpy(), squeeze(ny))
        np.testing.assert_array_equal(states[0].detach().numpy(), unb(nhn))
        if lstm:
            np.testing.assert_array_equal(states[1].detach().numpy(), unb(ncn))
        np.testing.assert_array_equal(xl.grad.numpy(), squeeze(ndx))
        if with_hx:
            np.testing.assert_array_equal(h0l.grad.numpy(), unb(ndh0))
            if lstm:
                np.testing.assert_array_equal(c0l.grad.numpy(), unb(ndc0))
    if not with_hx:
        assert h0l.grad is None
    # Every parameter's gradient, by name.
    grads = dict(m.named_parameters())
    assert set(grads) == {name for name, _, _ in config.param_specs()}
    for name, shape, offset in config.param_specs():
        n = int(np.prod(shape))
        np.testing.assert_array_equal(grads[name].grad.numpy(), ndp[offset : offset + n].reshape(shape), err_msg=name)
    return m, y


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64-reference", "f32-cpu"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_outputs_and_gradients_equal_the_numpy_api(case, kind, dtype):
    mode, kw = CASES[case]
    parity(mode, kw, kind, dtype)


# -- gradcheck -----------------------------------------------------------------------------------

GRADCHECK = {
    "lstm-peephole-layer_norm-input_forget-clip": ("lstm", dict(peephole=True, layer_norm=True, input_forget=True, gate_clip=2.0)),
    "lstm-reverse-proj-peephole": ("lstm", dict(direction="reverse", proj_size=2, peephole=True)),
    "gru-layer_norm-bidirectional-sum": ("gru", dict(layer_norm=True, bidirectional=True, merge="sum", num_layers=2)),
    "gru-cho-reverse": ("gru", dict(linear_before_reset=False, direction="reverse")),
    "rnn_tanh-bidirectional-sum-clip": ("rnn_tanh", dict(bidirectional=True, merge="sum", gate_clip=3.0)),
    "lstm-regularisers-training": ("lstm", dict(num_layers=2, zoneout=0.3, zoneout_cell=0.2, recurrent_dropout=0.3, input_dropout=0.2, dropout=0.2)),
    "gru-zoneout-training": ("gru", dict(zoneout=0.4, input_dropout=0.3, bidirectional=True)),
}


@pytest.mark.parametrize("case", list(GRADCHECK))
def test_gradcheck_float64(case):
    mode, kw = GRADCHECK[case]
    m = make(mode, torch.float64, input_size=2, hidden_size=3, **kw)
    m.train()
    names = m._flat_weights_names
    hs, cs = state_shapes(m._config, 2)
    x = randn(3, 2, 2, dtype=torch.float64, seed=5).requires_grad_()
    h0 = randn(*hs, dtype=torch.float64, seed=6).requires_grad_()
    c0 = randn(*cs, dtype=torch.float64, seed=7).requires_grad_()
    lstm = mode == "lstm"

    def f(x, h0, c0, *params):
        torch.manual_seed(17)  # the same masks in every evaluation
        out, state = torch.func.functional_call(m, dict(zip(names, params)), (x, (h0, c0) if lstm else h0))
        return (out, *state) if lstm else (out, state)

    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    if any(n.startswith(("weight_ln", "bias_ln")) for n in names):
        with torch.no_grad():  # gains and biases away from their init, so that every term counts
            for n, p in zip(names, params):
                if n.startswith(("weight_ln", "bias_ln")):
                    p.add_(0.3 * randn(*p.shape, dtype=torch.float64, seed=len(n)))
    if lstm:
        assert torch.autograd.gradcheck(f, (x, h0, c0, *params))
    else:
        assert torch.autograd.gradcheck(lambda x, h0, *ps: f(x, h0, None, *ps), (x, h0, *params))


# -- parameters, state_dict, init, pickling, repr ------------------------------------------------

ROUND_TRIP = ["lstm-layer_norm-peephole-proj-2layers", "lstm-everything", "gru-layer_norm-bidirectional", "gru-cho-bidirectional-sum", "rnn_relu-reverse-clip"]


@pytest.mark.parametrize("case", ROUND_TRIP)
def test_state_dict_round_trip_and_pickle(case):
    mode, kw = CASES[case]
    a = make(mode, torch.float32, seed=1, **kw)
    with torch.no_grad():  # layer-norm tensors away from 1 and 0, so that loading them matters
        for name, p in a.named_parameters():
            if "_ln_" in name:
                p.add_(0.2 * randn(*p.shape, dtype=torch.float32, seed=3))
    b = make(mode, torch.float32, seed=2, **kw)
    config = config_of(mode, **kw)
    assert list(a.state_dict()) == [name for name, _, _ in config.param_specs()]
    x = randn(B, T, I, dtype=torch.float32, seed=4) if config.batch_first else randn(T, B, I, dtype=torch.float32, seed=4)
    ya = a(x)
    assert not torch.equal(b(x)[0], ya[0])
    b.load_state_dict(a.state_dict())
    yb = b(x)
    torch.testing.assert_close(yb, ya, atol=0, rtol=0)
    for other in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        assert other.extra_repr() == a.extra_repr() and other._config == a._config
        torch.testing.assert_close(other(x), ya, atol=0, rtol=0)
    # The module's parameters are the NumPy API's: the same outputs as rk.Model's inference.
    ny = rk.Model(config, flat_params(a, config), backend="cpu", threads=1).forward(x.numpy())[0]
    np.testing.assert_array_equal(ya[0].detach().numpy(), ny)


def test_default_options_change_nothing():
    for mode in ("lstm", "gru", "rnn_tanh"):
        plain = make(mode, num_layers=2, bidirectional=True)
        explicit = make(mode, num_layers=2, bidirectional=True, direction="bidirectional", merge="concat", gate_clip=None, zoneout=0.0)
        assert plain._config == explicit._config == config_of(mode, num_layers=2, bidirectional=True)
        assert list(plain.state_dict()) == list(explicit.state_dict())
        for p, q in zip(plain.parameters(), explicit.parameters()):
            assert torch.equal(p, q)
        assert plain._config_no_masks is None and not plain._masked


def test_init_of_the_new_parameters():
    k = 1 / H**0.5
    plain = make("lstm", num_layers=2, bidirectional=True)
    ln = make("lstm", num_layers=2, bidirectional=True, layer_norm=True)
    for name, p in ln.named_parameters():
        if name.startswith("weight_ln_"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.startswith("bias_ln_"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:  # the layer-norm tensors draw nothing: the others are the plain module's
            assert torch.equal(p, plain.get_parameter(name)), name
    assert {n for n, _ in ln.named_parameters()} - {n for n, _ in plain.named_parameters()} == {
        f"{t}_l{layer}{s}" for t in ("weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c") for layer in (0, 1) for s in ("", "_reverse")
    }
    peep = make("lstm", peephole=True)
    w = peep.weight_peephole_l0
    assert w.shape == (3, H) and w.abs().max() <= k and w.std() > 0.1 * k
    # reset_parameters draws again, with the same conventions.
    with torch.no_grad():
        for p in ln.parameters():
            p.fill_(5.0)
    torch.manual_seed(99)
    ln.reset_parameters()
    for name, p in ln.named_parameters():
        if "_ln_" not in name:
            assert torch.equal(p, plain.get_parameter(name)), name
    assert torch.equal(ln.weight_ln_c_l1_reverse, torch.ones(H, dtype=torch.float64))
    gln = make("gru", layer_norm=True)
    assert gln.weight_ln_ih_l0.shape == (3 * H,) and not hasattr(gln, "weight_ln_c_l0")


def test_attributes_and_extra_repr():
    m = make("lstm", num_layers=2, direction="reverse", peephole=True, gate_clip=1.5, zoneout=0.25, layer_norm=True)
    assert (m.direction, m.bidirectional, m.merge, m.peephole, m.gate_clip, m.zoneout, m.zoneout_cell) == ("reverse", False, "concat", True, 1.5, 0.25, 0.0)
    r = repr(m)
    for part in ("direction='reverse'", "peephole=True", "layer_norm=True", "gate_clip=1.5", "zoneout=0.25"):
        assert part in r, r
    assert "merge" not in r and "input_forget" not in r and "recurrent_dropout" not in r
    g = make("gru", bidirectional=True, merge="sum", linear_before_reset=False, input_dropout=0.5)
    r = repr(g)
    assert "bidirectional=True" in r and "merge='sum'" in r and "linear_before_reset=False" in r and "input_dropout=0.5" in r
    assert "direction=" not in r  # bidirectional says it
    assert repr(make("gru")) == "GRU(4, 5, backend='reference', threads=1)"
    # direction="bidirectional" alone is bidirectional=True.
    d = make("gru", direction="bidirectional")
    assert d.bidirectional and d._config.num_directions == 2 and len(d.all_weights) == 2


def test_state_shapes_follow_direction_and_merge():
    x = randn(T, B, I, dtype=torch.float32, seed=8)
    rev = make("lstm", torch.float32, num_layers=2, direction="reverse", proj_size=2)
    y, (h, c) = rev(x)
    assert y.shape == (T, B, 2) and h.shape == (2, B, 2) and c.shape == (2, B, H)
    assert len(rev.all_weights) == 2
    with pytest.raises(ValueError, match=r"hx\[0\]"):
        rev(x, (torch.zeros(4, B, 2), torch.zeros(4, B, H)))
    rev(x, (torch.zeros(2, B, 2), torch.zeros(2, B, H)))
    s = make("gru", torch.float32, num_layers=2, bidirectional=True, merge="sum")
    y, h = s(x)
    assert y.shape == (T, B, H) and h.shape == (4, B, H)
    assert s.weight_ih_l1.shape == (3 * H, H)
    with pytest.raises(ValueError, match="hx"):
        s(x, torch.zeros(2, B, H))
    # The reverse direction runs from the last step back: its output at step 0 depends on the
    # whole sequence, the forward's at the last step does.
    fwd = make("rnn_tanh", torch.float64, direction="forward")
    bwd = make("rnn_tanh", torch.float64, direction="reverse")
    bwd.load_state_dict(fwd.state_dict())
    xd = randn(T, B, I, dtype=torch.float64, seed=9)
    torch.testing.assert_close(bwd(xd.flip(0))[0].flip(0), fwd(xd)[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(bwd(xd.flip(0))[1], fwd(xd)[1], atol=1e-12, rtol=1e-12)


# -- regularisers --------------------------------------------------------------------------------

REGULARISED = {
    "lstm-zoneout-zoneout_cell": ("lstm", dict(zoneout=0.3, zoneout_cell=0.2)),
    "gru-zoneout-2layers": ("gru", dict(zoneout=0.4, num_layers=2)),
    "rnn_tanh-zoneout-reverse": ("rnn_tanh", dict(zoneout=0.5, direction="reverse")),
    "lstm-recurrent_dropout-2layers": ("lstm", dict(recurrent_dropout=0.3, num_layers=2)),
    "gru-input_dropout-bidirectional": ("gru", dict(input_dropout=0.3, num_layers=2, bidirectional=True)),
    "lstm-all-peephole": ("lstm", dict(num_layers=2, dropout=0.2, zoneout=0.3, recurrent_dropout=0.25, input_dropout=0.2, peephole=True)),
    "rnn_relu-input_dropout-recurrent_dropout-sum": ("rnn_relu", dict(input_dropout=0.4, recurrent_dropout=0.4, bidirectional=True, merge="sum")),
}


def plain_config(config):
    meta = config.metadata()
    for key in (*REGULARISERS, "dropout"):
        meta.pop(key, None)
    return rk.Config.from_metadata(meta)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64-reference", "f32-cpu"])
@pytest.mark.parametrize("case", list(REGULARISED))
def test_training_mode_masks_are_the_librarys_from_torch_seed(case, dtype):
    mode, kw = REGULARISED[case]
    # Outputs and every gradient against forward_training + backward with the seed the module
    # took from torch's generator: the same bits.
    for kind in ("padded_hx", "packed_hx"):
        parity(mode, kw, kind, dtype, seed=123)


@pytest.mark.parametrize("case", list(REGULARISED))
def test_regularisers_train_and_eval(case):
    mode, kw = REGULARISED[case]
    dtype = torch.float32
    m = make(mode, dtype, **kw)
    config = config_of(mode, **kw)
    x = randn(T, B, I, dtype=dtype, seed=10)
    y1 = assert_masks_follow_seed(m, x)
    # Eval mode: the library's inference (zoneout's expectation, no dropout), deterministic,
    # the same bits with and without autograd.
    m.eval()
    model = rk.Model(config, flat_params(m, config), backend="cpu", threads=1)
    want = model.forward(x.numpy())
    with torch.no_grad():
        e1 = m(x)
        e2 = m(x)
    e3 = m(x)
    for got in (e1, e2, e3):
        out, state = got
        states = state if mode == "lstm" else (state,)
        for a, b in zip((out, *states), want):
            np.testing.assert_array_equal(a.detach().numpy(), b)
    assert e3[0].requires_grad
    assert not torch.equal(e1[0], y1)
    plain = rk.Model(plain_config(config), flat_params(m, config), backend="cpu", threads=1).forward(x.numpy())[0]
    zoned = config.zoneout > 0 or config.zoneout_cell > 0
    if zoned:
        # The expectation is not the plain cell; it has no backward in the library.
        assert not np.allclose(e1[0].numpy(), plain)
        with pytest.raises(RuntimeError, match="zoneout"):
            e3[0].sum().backward()
    else:
        np.testing.assert_array_equal(e1[0].numpy(), plain)
        # Eval mode under autograd: the model without the regularisers, whose training forward
        # is the inference; its gradients are the plain configuration's.
        m.zero_grad()
        e3[0].square().sum().backward()
        pm = rk.Model(plain_config(config), flat_params(m, config), backend="cpu", threads=1)
        _, _, _, reserve = pm.forward_training(x.numpy(), threads=1)
        dparams = pm.backward(reserve, dy=2 * e3[0].detach().numpy(), threads=1)[3]
        for name, shape, offset in config.param_specs():
            n = int(np.prod(shape))
            np.testing.assert_array_equal(m.get_parameter(name).grad.numpy(), dparams[offset : offset + n].reshape(shape), err_msg=name)
    assert m._config_no_masks == plain_config(config)


def test_regularisers_off_in_eval_are_nothing_for_dropouts_only():
    """A module with recurrent and input dropout in eval mode is the module without them."""
    a = make("lstm", torch.float64, num_layers=2, recurrent_dropout=0.5, input_dropout=0.5).eval()
    b = make("lstm", torch.float64, num_layers=2).eval()
    x = randn(T, B, I, dtype=torch.float64, seed=11)
    torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


# -- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, kw, exc, names",
    [
        ("gru", dict(peephole=True), TypeError, ["peephole"]),
        ("rnn_tanh", dict(layer_norm=True), TypeError, ["layer_norm"]),
        ("gru", dict(zoneout_cell=0.1), TypeError, ["zoneout_cell"]),
        ("rnn_relu", dict(input_forget=True), TypeError, ["input_forget"]),
        ("lstm", dict(linear_before_reset=False), TypeError, ["linear_before_reset"]),
        ("lstm", dict(merge="bogus", bidirectional=True), ValueError, ["merge"]),
        ("gru", dict(merge="sum"), ValueError, ["merge"]),
        ("lstm", dict(merge="sum", direction="reverse"), ValueError, ["merge"]),
        ("lstm", dict(zoneout=-0.1), ValueError, ["zoneout"]),
        ("lstm", dict(zoneout=1.0), ValueError, ["zoneout"]),
        ("lstm", dict(zoneout_cell=1.5), ValueError, ["zoneout_cell"]),
        ("gru", dict(recurrent_dropout=-0.5), ValueError, ["recurrent_dropout"]),
        ("rnn_tanh", dict(input_dropout=float("nan")), ValueError, ["input_dropout"]),
        ("lstm", dict(gate_clip=0.0), ValueError, ["gate_clip"]),
        ("gru", dict(gate_clip=-1.0), ValueError, ["gate_clip"]),
        ("lstm", dict(direction="sideways"), ValueError, ["direction"]),
        ("lstm", dict(direction="reverse", bidirectional=True), ValueError, ["direction", "bidirectional"]),
        ("gru", dict(linear_before_reset=False, layer_norm=True), ValueError, ["layer_norm"]),
        ("gru", dict(linear_before_reset=False, recurrent_dropout=0.2), ValueError, ["recurrent_dropout"]),
        ("lstm", dict(peephole="yes"), TypeError, ["peephole"]),
        ("lstm", dict(zoneout="0.1"), TypeError, ["zoneout"]),
        ("gru", dict(gate_clip="1"), TypeError, ["gate_clip"]),
        ("gru", dict(layer_norm=1), TypeError, ["layer_norm"]),
        ("rnn_tanh", dict(merge=None, bidirectional=True), TypeError, ["merge"]),
    ],
)
def test_bad_arguments_name_themselves(mode, kw, exc, names):
    with pytest.raises(exc) as e:
        make(mode, torch.float32, **kw)
    for name in names:
        assert name in str(e.value)


def test_options_a_cell_does_not_take_through_rnnbase_are_value_errors():
    refused = (("GRU", dict(peephole=True), "peephole"), ("RNN_TANH", dict(layer_norm=True), "layer_norm"), ("GRU", dict(zoneout_cell=0.2), "zoneout_cell"))
    for mode, kw, name in refused:
        with pytest.raises(ValueError, match=name):
            rkt.RNNBase(mode, I, H, **kw)
    rkt.RNNBase("LSTM", I, H, peephole=True, zoneout_cell=0.2)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        rkt.LSTM(I, H, 1, True, False, 0.0, False, 0, None, None, "reverse")
    with pytest.raises(TypeError):
        rkt.GRU(I, H, 1, True, False, 0.0, False, None, None, "reverse")


def test_state_of_a_module_pickled_before_the_options_loads():
    """A pickled module's state from before the options (``_config_no_dropout``, no option
    attributes) still loads: the options at their defaults, the model without dropout kept."""
    m = make("gru", torch.float64, num_layers=2, dropout=0.3)
    state = m.__getstate__()
    state["_config_no_dropout"] = state.pop("_config_no_masks")
    for name in ("_masked", *rkt._OPTIONS):
        del state[name]
    old = rkt.GRU.__new__(rkt.GRU)
    old.__setstate__(state)
    assert (old.direction, old.merge, old.zoneout, old.linear_before_reset, old._masked) == ("forward", "concat", 0.0, True, True)
    assert old._config_no_masks == config_of("gru", num_layers=2)
    x = randn(T, B, I, dtype=torch.float64, seed=12)
    old.eval()
    m.eval()
    torch.testing.assert_close(old(x), m(x), atol=0, rtol=0)
