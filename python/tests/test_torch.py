"""rnn_kernels.torch against torch.nn: outputs and every gradient, state_dict, optimisers,
micro-batches, the weights' refresh, threads and argument errors."""

import copy
import pickle

import pytest

torch = pytest.importorskip("torch", reason="torch is missing; pip install torch to run the PyTorch layer's tests")

from torch import nn  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

import rnn_kernels.torch as rkt  # noqa: E402
from conftest import assert_masks_follow_seed  # noqa: E402

I, H, T, B = 5, 7, 6, 4
LENGTHS = [6, 2, 5, 1]  # unsorted
TOL = {torch.float64: dict(atol=1e-9, rtol=1e-9), torch.float32: dict(atol=1e-4, rtol=1e-4)}
BACKEND = {torch.float64: "reference", torch.float32: "cpu"}
MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


@pytest.fixture(autouse=True)
def one_thread():
    """One thread (torch's and so the modules'): small shapes on a busy machine are faster so; the
    threads test checks that 1 and 2 threads give the same bits."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def classes(mode):
    return {
        "lstm": (nn.LSTM, rkt.LSTM, {}),
        "gru": (nn.GRU, rkt.GRU, {}),
        "rnn_tanh": (nn.RNN, rkt.RNN, {"nonlinearity": "tanh"}),
        "rnn_relu": (nn.RNN, rkt.RNN, {"nonlinearity": "relu"}),
    }[mode]


def pair(mode, dtype=torch.float64, input_size=I, hidden_size=H, **kw):
    """torch.nn's module and ours with the same weights."""
    theirs_cls, ours_cls, extra = classes(mode)
    torch.manual_seed(1234)
    theirs = theirs_cls(input_size, hidden_size, **extra, **kw, dtype=dtype)
    ours = ours_cls(input_size, hidden_size, **extra, **kw, dtype=dtype, backend=BACKEND[dtype])
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def randn(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def state_shapes(m, batch):
    d = 2 if m.bidirectional else 1
    h = (m.num_layers * d, batch, m.proj_size or m.hidden_size)
    return h, (m.num_layers * d, batch, m.hidden_size)


def make_inputs(m, kind, dtype, seed=0):
    """x (a leaf), hx (leaves or None) and how to call: padded, packed or unbatched input."""
    batched = not kind.startswith("unbatched")
    if batched:
        x = randn(B, T, I, dtype=dtype, seed=seed) if m.batch_first else randn(T, B, I, dtype=dtype, seed=seed)
    else:
        x = randn(T, I, dtype=dtype, seed=seed)
    hx = None
    if kind.endswith("_hx"):
        hs, cs = state_shapes(m, B)
        if not batched:
            hs, cs = (hs[0], hs[2]), (cs[0], cs[2])
        h0 = randn(*hs, dtype=dtype, seed=seed + 1)
        hx = (h0, randn(*cs, dtype=dtype, seed=seed + 2)) if m.mode == "LSTM" else h0
    return x, hx


def leaves(x, hx):
    x = x.clone().requires_grad_()
    if hx is None:
        return x, None
    if isinstance(hx, tuple):
        return x, tuple(t.clone().requires_grad_() for t in hx)
    return x, hx.clone().requires_grad_()


def call(m, kind, x, hx):
    """Runs m; returns (the output as torch returned it, the tensors to differentiate)."""
    inp = x
    if kind.startswith("packed"):
        lengths = torch.tensor(sorted(LENGTHS, reverse=True) if "sorted" in kind and "unsorted" not in kind else LENGTHS)
        inp = pack_padded_sequence(x, lengths, batch_first=m.batch_first, enforce_sorted="unsorted" not in kind)
    out, h = m(inp) if hx is None else m(inp, hx)
    y = out.data if isinstance(out, PackedSequence) else out
    return out, [y] + list(h if isinstance(h, tuple) else (h,))


def grads_of(m, x, hx):
    gs = {"x": x.grad}
    if hx is not None:
        for i, t in enumerate(hx if isinstance(hx, tuple) else (hx,)):
            gs[f"hx{i}"] = t.grad
    for name, p in m.named_parameters():
        gs[name] = p.grad
    return gs


def run_both(theirs, ours, kind, dtype, seed=0):
    x, hx = make_inputs(theirs, kind, dtype, seed)
    results = []
    weights = None
    for m in (theirs, ours):
        xl, hl = leaves(x, hx)
        out, outs = call(m, kind, xl, hl)
        if weights is None:
            g = torch.Generator().manual_seed(seed + 7)
            weights = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype) for t in outs]
        sum((t * w).sum() for t, w in zip(outs, weights)).backward()
        results.append((out, outs, grads_of(m, xl, hl)))
    return results


LAYOUTS = {
    "1layer": {},
    "2layers_bidirectional": {"num_layers": 2, "bidirectional": True},
    "2layers_batch_first": {"num_layers": 2, "batch_first": True},
    "bidirectional_batch_first_no_bias": {"bidirectional": True, "batch_first": True, "bias": False},
    "proj_2layers_bidirectional": {"num_layers": 2, "bidirectional": True, "proj_size": 3},
}
INPUTS = ["padded", "padded_hx", "packed_unsorted_hx", "packed_unsorted", "packed_sorted_hx", "unbatched", "unbatched_hx"]


# proj_size is LSTM's: the other modes take every layout but that one.
MODE_LAYOUTS = [(m, lay) for m in MODES for lay in LAYOUTS if m == "lstm" or "proj_size" not in LAYOUTS[lay]]


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("mode,layout", MODE_LAYOUTS, ids=[f"{m}-{lay}" for m, lay in MODE_LAYOUTS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64_reference", "f32_cpu"])
def test_parity_outputs_and_gradients(dtype, mode, layout, kind):
    kw = LAYOUTS[layout]
    theirs, ours = pair(mode, dtype, **kw)
    (out_t, outs_t, grads_t), (out_o, outs_o, grads_o) = run_both(theirs, ours, kind, dtype)
    tol = TOL[dtype]
    assert type(out_o) is type(out_t)
    if isinstance(out_t, PackedSequence):
        assert torch.equal(out_o.batch_sizes, out_t.batch_sizes)
        for a, b in ((out_o.sorted_indices, out_t.sorted_indices), (out_o.unsorted_indices, out_t.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
    for i, (a, b) in enumerate(zip(outs_o, outs_t)):
        assert a.shape == b.shape and a.dtype == b.dtype, i
        torch.testing.assert_close(a, b, **tol, msg=lambda m, i=i: f"output {i}: {m}")
    assert grads_o.keys() == grads_t.keys()
    for name in grads_t:
        assert grads_o[name] is not None, name
        torch.testing.assert_close(grads_o[name], grads_t[name], **tol, msg=lambda m, n=name: f"grad {n}: {m}")


def test_same_init_state_dict_keys_and_repr():
    for mode in MODES:
        for kw in LAYOUTS.values():
            if "proj_size" in kw and mode != "lstm":
                continue
            theirs_cls, ours_cls, extra = classes(mode)
            torch.manual_seed(5)
            theirs = theirs_cls(I, H, **extra, **kw)
            torch.manual_seed(5)
            ours = ours_cls(I, H, **extra, **kw)
            sd_t, sd_o = theirs.state_dict(), ours.state_dict()
            assert list(sd_o) == list(sd_t)
            for k in sd_t:
                assert sd_o[k].shape == sd_t[k].shape and sd_o[k].dtype == sd_t[k].dtype
                assert torch.equal(sd_o[k], sd_t[k]), k  # torch.nn's initialisation, draw for draw
            assert repr(ours) == repr(theirs)
            assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
            assert ours._flat_weights_names == theirs._flat_weights_names
            assert [[p.shape for p in ws] for ws in ours.all_weights] == [[p.shape for p in ws] for ws in theirs.all_weights]
    assert repr(rkt.GRU(3, 4, threads=2, backend="reference")) == "GRU(3, 4, backend='reference', threads=2)"


def test_load_state_dict_round_trip():
    theirs, ours = pair("lstm", torch.float32, num_layers=2, bidirectional=True, proj_size=3)
    torch.manual_seed(99)
    other = rkt.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=3)
    theirs.load_state_dict(other.state_dict())  # ours -> torch.nn
    for k, v in other.state_dict().items():
        assert torch.equal(theirs.state_dict()[k], v)
    ours.load_state_dict(theirs.state_dict())  # torch.nn -> ours, in place into the flat tensor
    flat = ours._flat
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)
    assert ours._flat is flat and ours._reflattens == 0
    x = randn(T, B, I, dtype=torch.float32, seed=3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-5, rtol=1e-5)


def test_parameters_are_views_of_one_flat_tensor():
    m = rkt.LSTM(I, H, num_layers=2, bidirectional=True)
    flat = m._flat
    base, item = flat.data_ptr(), flat.element_size()
    for (name, shape, offset, n), p in zip(m._specs, m.parameters()):
        assert p.data_ptr() == base + offset * item and tuple(p.shape) == shape
    assert sum(p.numel() for p in m.parameters()) == flat.numel()
    # A parameter's in-place change bumps the flat tensor's version counter (they share it).
    v = flat._version
    with torch.no_grad():
        m.weight_hh_l1_reverse.add_(1.0)
    assert flat._version > v
    torch.optim.SGD(m.parameters(), lr=0.1)  # noqa: B018 -- the optimiser holds the same tensors
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    v = flat._version
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert flat._version > v and m._flat is flat


def test_refresh_only_when_weights_change():
    theirs, ours = pair("gru", torch.float32, num_layers=2)
    x = randn(T, B, I, dtype=torch.float32, seed=1)
    ours(x)
    n0 = ours._refreshes
    ours(x)
    with torch.no_grad():
        ours(x)
    ours(x)[0].sum().backward()
    assert ours._refreshes == n0, "no weight changed, no repack"
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt.step()
    ours(x)
    assert ours._refreshes == n0 + 1
    ours(x)
    assert ours._refreshes == n0 + 1
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-5, rtol=1e-5)
    assert ours._refreshes == n0 + 2
    # A parameter replaced by another tensor is copied into the flat tensor and viewed again.
    p = ours.weight_ih_l0
    p.data = torch.full_like(p, 0.25)
    with torch.no_grad():
        theirs.weight_ih_l0.fill_(0.25)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-5, rtol=1e-5)
    assert ours._reflattens == 1 and ours.weight_ih_l0 is p
    assert p.data_ptr() == ours._flat.data_ptr() + ours._specs[0][2] * 4
    # load_state_dict(assign=True) puts new Parameters in: taken into the flat tensor too.
    theirs2, _ = pair("gru", torch.float32, num_layers=2)
    ours.load_state_dict({k: nn.Parameter(v.clone()) for k, v in theirs2.state_dict().items()}, assign=True)
    torch.testing.assert_close(ours(x)[0], theirs2(x)[0], atol=1e-5, rtol=1e-5)
    # A change the version counters do not see, then flatten_parameters(force=True).
    ours._flat.numpy()[:] = 0.0
    ours.flatten_parameters(force=True)
    assert float(ours(x)[0].detach().abs().max()) == 0.0


def test_dtype_conversion_and_copies():
    theirs, explicit = pair("lstm", torch.float32, num_layers=2, bidirectional=True)
    ours = rkt.LSTM(I, H, num_layers=2, bidirectional=True)  # backend None: "cpu", then "reference"
    ours.load_state_dict(explicit.state_dict())
    x = randn(T, B, I, dtype=torch.float32, seed=4)
    assert torch.equal(ours(x)[0], explicit(x)[0]) and ours._models[0][0].backend == "cpu"
    explicit.double()
    with pytest.raises(TypeError, match="backend 'cpu'"):
        explicit(x.double())
    ours.double()
    theirs.double()
    assert ours._flat.dtype == torch.float32  # until the next call
    (_, outs_t, grads_t), (_, outs_o, grads_o) = run_both(theirs, ours, "padded_hx", torch.float64)
    assert ours._flat.dtype == torch.float64 and ours._models[0][0].backend == "reference"
    for a, b in zip(outs_o, outs_t):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    for k in grads_t:
        torch.testing.assert_close(grads_o[k], grads_t[k], atol=1e-9, rtol=1e-9)
    x = randn(T, B, I, dtype=torch.float64, seed=4)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        torch.testing.assert_close(clone(x)[0], ours(x)[0], atol=0, rtol=0)
        with torch.no_grad():
            clone.weight_ih_l0.zero_()
        assert not torch.equal(clone(x)[0], ours(x)[0])


def test_functional_call():
    theirs, ours = pair("gru", torch.float64, bidirectional=True)
    x = randn(T, B, I, dtype=torch.float64, seed=2)
    params = {k: (v + 0.01).requires_grad_() for k, v in theirs.state_dict().items()}
    y_t = torch.func.functional_call(theirs, params, (x,))[0]
    gt = torch.autograd.grad(y_t.square().sum(), list(params.values()))
    y_o = torch.func.functional_call(ours, params, (x,))[0]
    go = torch.autograd.grad(y_o.square().sum(), list(params.values()))
    torch.testing.assert_close(y_o, y_t, atol=1e-9, rtol=1e-9)
    for a, b in zip(go, gt):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    # The module's own weights are untouched.
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64_reference", "f32_cpu"])
def test_optimiser_steps_match(opt_name, dtype):
    theirs, ours = pair("lstm", dtype, num_layers=2, bidirectional=True, batch_first=True)
    heads = []
    for _ in range(2):
        torch.manual_seed(7)
        heads.append(nn.Linear(2 * H, 3, dtype=dtype))
    make = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.5, momentum=0.9), "adam": lambda ps: torch.optim.Adam(ps, lr=0.01)}[opt_name]
    opts = [make(list(m.parameters()) + list(h.parameters())) for m, h in zip((theirs, ours), heads)]
    for step in range(4):
        x = randn(B, T, I, dtype=dtype, seed=10 + step)
        target = randn(B, T, 3, dtype=dtype, seed=20 + step)
        for m, head, opt in zip((theirs, ours), heads, opts):
            opt.zero_grad()
            loss = nn.functional.mse_loss(head(m(x)[0]), target)
            loss.backward()
            opt.step()
    tol = {torch.float64: dict(atol=1e-9, rtol=1e-9), torch.float32: dict(atol=1e-4, rtol=1e-4)}[dtype]
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, k=k: f"{k}: {m}")
    assert ours._refreshes == 3  # one repack per step after the first


def test_micro_batches_accumulate():
    theirs, ours = pair("lstm", torch.float64, num_layers=2)
    xa, xb = randn(T, B, I, dtype=torch.float64, seed=1), randn(T, 3, I, dtype=torch.float64, seed=2)
    for m in (theirs, ours):
        ya, yb = m(xa)[0], m(xb)[0]  # forward A, forward B
        ya.square().sum().backward()  # backward A
        yb.sin().sum().backward()  # backward B
        (m(xa)[1][1].sum() * 0.5).backward()  # and one more on top
    for (k, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-9, rtol=1e-9, msg=lambda m, k=k: f"{k}: {m}")
    assert len(ours._pool) == 2  # two reserves were in use at once; both back in the pool


def test_retain_graph_and_pool():
    theirs, ours = pair("gru", torch.float64)
    x = randn(T, B, I, dtype=torch.float64, seed=3)
    for m in (theirs, ours):
        loss = m(x)[0].square().sum()
        loss.backward(retain_graph=True)
        loss.backward()
    assert len(ours._pool) == 1
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-9, rtol=1e-9)
    # A retained graph keeps its reserve out of the pool until the graph is freed.
    loss = ours(x)[0].sum()
    assert len(ours._pool) == 0
    loss.backward(retain_graph=True)
    assert len(ours._pool) == 0
    del loss
    assert len(ours._pool) == 1
    # A second backward through a freed graph is torch's error.
    loss = ours(x)[0].sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()
    # Outputs dropped without a backward give the reserve back too.
    ours(x)
    assert len(ours._pool) == 1


def test_weights_changed_between_forward_and_backward():
    """ours: the gradients of the weights the forward ran with (torch.nn raises instead)."""
    _, ours = pair("lstm", torch.float64, num_layers=2, bidirectional=True)
    old = copy.deepcopy(ours)
    xa, xb = randn(T, B, I, dtype=torch.float64, seed=5), randn(T, B, I, dtype=torch.float64, seed=6)
    opt = torch.optim.SGD(ours.parameters(), lr=0.3)
    ours.zero_grad()
    ya = ours(xa)[0]
    ours(xa)[0].sum().backward()
    opt.step()  # weights change while ya's graph is alive
    new = copy.deepcopy(ours)
    ours.zero_grad()
    yb = ours(xb)[0]  # a forward with the new weights before A's backward
    ya.square().sum().backward()
    grads_a = [p.grad.clone() for p in ours.parameters()]
    ours.zero_grad()
    yb.square().sum().backward()
    grads_b = [p.grad.clone() for p in ours.parameters()]
    for clone, x, grads in ((old, xa, grads_a), (new, xb, grads_b)):
        clone.zero_grad()
        clone(x)[0].square().sum().backward()
        for g, p in zip(grads, clone.parameters()):
            torch.testing.assert_close(g, p.grad, atol=1e-12, rtol=1e-12)


def test_no_grad_inference_matches_training_forward():
    _, ours = pair("lstm", torch.float32, num_layers=2, bidirectional=True)
    x = randn(T, B, I, dtype=torch.float32, seed=8)
    y1, (h1, c1) = ours(x)
    with torch.no_grad():
        y2, (h2, c2) = ours(x)
    assert y1.requires_grad and not y2.requires_grad
    assert torch.equal(y1, y2) and torch.equal(h1, h2) and torch.equal(c1, c2)
    with torch.inference_mode():
        y3 = ours(x)[0]
    assert torch.equal(y3, y2)


def test_threads_follow_torch_and_are_bit_identical():
    _, ours = pair("lstm", torch.float32, input_size=16, hidden_size=32, num_layers=2, bidirectional=True)
    x = randn(T, 9, 16, dtype=torch.float32, seed=9)
    saved = torch.get_num_threads()
    seen = []
    real = ours._threads
    ours._threads = lambda: seen.append(real()) or seen[-1]
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            ours.zero_grad()
            xl = x.clone().requires_grad_()
            y, (h, c) = ours(xl)
            (y.square().sum() + h.sum() + c.sum()).backward()
            results.append([y, h, c, xl.grad] + [p.grad for p in ours.parameters()])
    finally:
        torch.set_num_threads(saved)
    assert seen == [1, 2]
    for a, b in zip(*results):
        assert torch.equal(a, b)
    fixed = rkt.GRU(4, 5, threads=1)
    assert fixed._threads() == 1


def test_dropout_reproducible_and_gradients():
    m = rkt.GRU(I, H, num_layers=3, dropout=0.4, dtype=torch.float64)
    x = randn(T, B, I, dtype=torch.float64, seed=11)
    y1 = assert_masks_follow_seed(m, x)
    m.eval()
    theirs = nn.GRU(I, H, num_layers=3, dropout=0.4, dtype=torch.float64).eval()
    theirs.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x)[0], theirs(x)[0], atol=1e-9, rtol=1e-9)  # autograd: the model without dropout
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], theirs(x)[0], atol=1e-9, rtol=1e-9)  # inference: no masks
    assert not torch.equal(m(x)[0], y1)
    # The backward differentiates the forward with its masks (same seed in every evaluation).
    m.train()
    small = rkt.LSTM(3, 4, num_layers=2, dropout=0.5, bidirectional=True, dtype=torch.float64)
    xs = randn(4, 2, 3, dtype=torch.float64, seed=12).requires_grad_()

    def f(x, *params):
        torch.manual_seed(17)
        out = torch.func.functional_call(small, dict(zip(small._flat_weights_names, params)), (x,))
        return out[0], out[1][0], out[1][1]

    assert torch.autograd.gradcheck(f, (xs, *[p.detach().clone().requires_grad_() for p in small.parameters()]))


def test_argument_errors():
    m = rkt.LSTM(I, H, num_layers=2)
    x = randn(T, B, I, dtype=torch.float32, seed=0)
    h, c = torch.zeros(2, B, H), torch.zeros(2, B, H)
    with pytest.raises(ValueError, match="input"):
        m(x.double())
    with pytest.raises(ValueError, match="input"):
        m(torch.zeros(T, B, I, device="meta"))
    with pytest.raises(ValueError, match="2D or 3D"):
        m(x[None])
    with pytest.raises(ValueError, match="input_size"):
        m(x[..., :3])
    with pytest.raises(TypeError, match="input"):
        m(x.numpy())
    with pytest.raises(TypeError, match="hx"):
        m(x, h)
    with pytest.raises(ValueError, match=r"hx\[0\]"):
        m(x, (torch.zeros(2, B + 1, H), c))
    with pytest.raises(ValueError, match=r"hx\[1\]"):
        m(x, (h, torch.zeros(1, B, H)))
    with pytest.raises(ValueError, match=r"hx\[1\]"):
        m(x, (h, c.double()))
    with pytest.raises(ValueError, match=r"hx\[0\].*2-D"):
        m(x[:, 0], (h, c))
    g = rkt.GRU(I, H)
    with pytest.raises(ValueError, match="hx"):
        g(x, torch.zeros(1, B, H + 1))
    with pytest.raises(ValueError, match="hx"):
        g(x, torch.zeros(1, B, H, dtype=torch.float64))
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    with pytest.raises(ValueError, match="hx"):
        g(packed, torch.zeros(1, B - 1, H))
    # The constructor's arguments.
    with pytest.raises(ValueError, match="device"):
        rkt.LSTM(I, H, device="meta")
    with pytest.raises(TypeError, match="dtype"):
        rkt.LSTM(I, H, dtype=torch.float16)
    with pytest.raises(TypeError, match="dtype"):
        rkt.LSTM(I, H, dtype=torch.float64, backend="cpu")
    with pytest.raises(ValueError, match="backend"):
        rkt.LSTM(I, H, backend="gpu")
    with pytest.raises(ValueError, match="threads"):
        rkt.LSTM(I, H, threads=0)
    with pytest.raises(TypeError, match="proj_size"):
        rkt.GRU(I, H, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        rkt.LSTM(I, H, proj_size=H)
    with pytest.raises(ValueError, match="nonlinearity"):
        rkt.RNN(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        rkt.LSTM(I, H, dropout=1.5)
    with pytest.raises(TypeError, match="hidden_size"):
        rkt.LSTM(I, 7.0)
    # Parameters moved off the CPU or to another dtype.
    m.half()
    with pytest.raises(TypeError, match="float32 or float64"):
        m(x.half())
