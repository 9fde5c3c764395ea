"""The NumPy API of rnn_kernels against the library's own expectations, without PyTorch.

The float64 reference is the specification: the float32 CPU backend agrees with it within
float32's tolerance, backward agrees with central finite differences of forward, and the CPU
backend gives the same bits for any thread count.
"""

import pickle
import threading

import numpy as np
import pytest

import rnn_kernels as rk

MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def rng(seed):
    return np.random.default_rng(seed)


def params_for(config, seed, dtype=np.float32, scale=None):
    k = scale if scale is not None else 1.0 / np.sqrt(config.hidden_size)
    return rng(seed).uniform(-k, k, config.param_count).astype(dtype)


def inputs(config, steps, batch, seed, dtype=np.float32):
    r = rng(seed)
    shape = (batch, steps, config.input_size) if config.batch_first else (steps, batch, config.input_size)
    x = r.standard_normal(shape).astype(dtype)
    lds = config.num_layers * config.num_directions
    h0 = r.standard_normal((lds, batch, config.state_size)).astype(dtype) * 0.5
    c0 = r.standard_normal((lds, batch, config.hidden_size)).astype(dtype) * 0.5 if config.mode == "lstm" else None
    return x, h0, c0


def configs():
    for mode in MODES:
        yield rk.Config(mode, 5, 7, num_layers=2, bidirectional=True)
    yield rk.Config("lstm", 5, 8, num_layers=2, bidirectional=True, proj_size=3)
    yield rk.Config("gru", 4, 6, batch_first=True)
    yield rk.Config("rnn_tanh", 4, 6, num_layers=3, bias=False)


def ids(c):
    return repr(c)


# -- configuration ---------------------------------------------------------------------------


def test_config_properties_and_param_specs():
    c = rk.Config("lstm", 10, 20, num_layers=2, bidirectional=True, proj_size=5)
    assert (c.mode, c.input_size, c.hidden_size, c.num_layers) == ("lstm", 10, 20, 2)
    assert c.bias and c.bidirectional and not c.batch_first
    assert (c.proj_size, c.dropout, c.num_directions, c.output_size, c.state_size) == (5, 0.0, 2, 10, 5)
    specs = c.param_specs()
    names = [s[0] for s in specs]
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0"]
    assert names[5] == "weight_ih_l0_reverse"
    assert dict((n, s) for n, s, _ in specs)["weight_ih_l1"] == (80, 10)
    assert dict((n, s) for n, s, _ in specs)["weight_hr_l1_reverse"] == (5, 20)
    # Offsets are consecutive and cover the flat buffer.
    end = 0
    for _, shape, offset in specs:
        assert offset == end
        end += int(np.prod(shape))
    assert end == c.param_count
    assert c == rk.Config("LSTM", 10, 20, num_layers=2, bidirectional=True, proj_size=5)
    assert c != rk.Config("lstm", 10, 20, num_layers=2, bidirectional=True)
    assert hash(c) == hash(rk.Config("lstm", 10, 20, num_layers=2, bidirectional=True, proj_size=5))
    assert "proj_size=5" in repr(c)
    assert pickle.loads(pickle.dumps(c)) == c


def test_config_dropout_and_metadata():
    c = rk.Config("gru", 3, 4, num_layers=3, dropout=0.25, batch_first=True)
    assert c.dropout == 0.25 and c.batch_first
    assert set(c.options) == {"dropout", "batch_first"}
    assert rk.Config.from_metadata(c.metadata()) == c


@pytest.mark.parametrize(
    "kwargs, arg, exc",
    [
        (dict(mode="lstmm"), "mode", ValueError),
        (dict(hidden_size=-1), "hidden_size", ValueError),
        (dict(input_size=-3), "input_size", ValueError),
        (dict(num_layers=-1), "num_layers", ValueError),
        (dict(proj_size=-2), "proj_size", ValueError),
        (dict(hidden_size=0), "hidden_size", ValueError),
        (dict(num_layers=0), "num_layers", ValueError),
        (dict(dropout=1.5), "dropout", ValueError),
        (dict(input_size="5"), "input_size", TypeError),
    ],
)
def test_config_refuses_bad_values_naming_them(kwargs, arg, exc):
    args = dict(mode="lstm", input_size=5, hidden_size=7)
    args.update(kwargs)
    with pytest.raises(exc, match=arg):
        rk.Config(**args)


def test_module_functions():
    assert rk.backends()[:2] == ["reference", "cpu"]
    isas = rk.available_isas()
    assert "scalar" in isas and rk.default_isa() in isas
    assert isinstance(rk.__version__, str)


# -- the backends agree ----------------------------------------------------------------------


def run_all(model, x, h0, c0, lengths, dy_seed=7):
    """Forward (inference and training) and backward with random upstream gradients."""
    y, hn, cn = model.forward(x, lengths=lengths, h0=h0, c0=c0)
    y2, hn2, cn2, reserve = model.forward_training(x, lengths=lengths, h0=h0, c0=c0)
    r = rng(dy_seed)
    dy = r.standard_normal(y.shape).astype(y.dtype)
    dhn = r.standard_normal(hn.shape).astype(y.dtype)
    dcn = r.standard_normal(cn.shape).astype(y.dtype) if cn is not None else None
    grads = model.backward(reserve, dy=dy, dhn=dhn, dcn=dcn)
    return (y, hn, cn), (y2, hn2, cn2), grads


@pytest.mark.parametrize("config", list(configs()), ids=ids)
def test_cpu_float32_agrees_with_reference_float64(config):
    p64 = params_for(config, 1, np.float64)
    x, h0, c0 = inputs(config, 6, 3, 2, np.float64)
    lengths = [6, 2, 4]
    ref = rk.Model(config, p64, backend="reference")
    cpu = rk.Model(config, p64.astype(np.float32), backend="cpu")
    ref32 = rk.Model(config, p64.astype(np.float32), backend="reference")
    f32 = lambda a: None if a is None else a.astype(np.float32)  # noqa: E731
    want = run_all(ref, x, h0, c0, lengths)
    for model in (cpu, ref32):
        got = run_all(model, f32(x), f32(h0), f32(c0), lengths)
        for w_part, g_part in zip(want, got):
            for w, g in zip(w_part, g_part):
                assert (w is None) == (g is None)
                if w is not None:
                    assert g.dtype == np.float32 and g.shape == w.shape
                    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)
    # Inference and the training forward give the same outputs.
    for a, b in zip(want[0], want[1]):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_cpu_results_are_bit_identical_for_any_thread_count():
    config = rk.Config("lstm", 32, 48, num_layers=2, bidirectional=True)
    p = params_for(config, 3)
    x, h0, c0 = inputs(config, 12, 200, 4)
    lengths = rng(5).integers(1, 13, size=200)
    results = []
    for threads in (1, 2, 3):
        model = rk.Model(config, p, backend="cpu", threads=threads)
        results.append(run_all(model, x, h0, c0, lengths))
    # A per-call thread count on one model, without re-planning.
    model = rk.Model(config, p, backend="cpu", threads=1)
    y1, *_ = model.forward(x, lengths=lengths, h0=h0, c0=c0, threads=2)
    _, _, _, r = model.forward_training(x, lengths=lengths, threads=2)
    g2 = model.backward(r, dy=np.ones_like(y1), threads=3)
    g1 = model.backward(r, dy=np.ones_like(y1), threads=1)
    assert model.plan_generation == 0
    np.testing.assert_array_equal(y1, results[0][0][0])
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)
    for other in results[1:]:
        for part_a, part_b in zip(results[0], other):
            for a, b in zip(part_a, part_b):
                np.testing.assert_array_equal(a, b)


# -- variable lengths and layouts ------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("mode", MODES)
def test_lengths_are_packed_sequences(backend, mode):
    config = rk.Config(mode, 3, 5, num_layers=2, bidirectional=True)
    model = rk.Model(config, params_for(config, 11), backend=backend)
    steps, lengths = 7, [7, 3, 1, 5]
    x, h0, c0 = inputs(config, steps, len(lengths), 12)
    y, hn, cn = model.forward(x, lengths=np.array(lengths), h0=h0, c0=c0)
    for b, n in enumerate(lengths):
        assert not y[n:, b].any(), "outputs past a length are zero"
        # Each sequence alone, cut to its length, gives the same outputs and final states.
        yb, hb, cb = model.forward(
            np.ascontiguousarray(x[:n, b : b + 1]),
            h0=np.ascontiguousarray(h0[:, b : b + 1]),
            c0=None if c0 is None else np.ascontiguousarray(c0[:, b : b + 1]),
        )
        np.testing.assert_allclose(y[:n, b], yb[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(hn[:, b], hb[:, 0], rtol=1e-5, atol=1e-6)
        if cn is not None:
            np.testing.assert_allclose(cn[:, b], cb[:, 0], rtol=1e-5, atol=1e-6)
    # Lengths as a list, a tuple or an int array of another width: the same call.
    for given in (lengths, tuple(lengths), np.array(lengths, dtype=np.int32), np.array(lengths, dtype=np.uint8)):
        np.testing.assert_array_equal(model.forward(x, lengths=given, h0=h0, c0=c0)[0], y)
    # All lengths T is the call without lengths.
    full = model.forward(x, h0=h0, c0=c0)[0]
    np.testing.assert_array_equal(model.forward(x, lengths=[steps] * 4, h0=h0, c0=c0)[0], full)


def test_batch_first_is_the_transposed_time_major_call():
    tm = rk.Config("gru", 4, 6, num_layers=2, bidirectional=True)
    bf = rk.Config("gru", 4, 6, num_layers=2, bidirectional=True, batch_first=True)
    p = params_for(tm, 21)
    x, h0, _ = inputs(tm, 5, 3, 22)
    a = rk.Model(tm, p)
    b = rk.Model(bf, p)
    ya, ha, _ = a.forward(x, lengths=[5, 2, 4], h0=h0)
    yb, hb, _ = b.forward(np.ascontiguousarray(x.transpose(1, 0, 2)), lengths=[5, 2, 4], h0=h0)
    np.testing.assert_array_equal(yb, ya.transpose(1, 0, 2))
    np.testing.assert_array_equal(hb, ha)
    _, _, _, ra = a.forward_training(x, lengths=[5, 2, 4], h0=h0)
    _, _, _, rb = b.forward_training(np.ascontiguousarray(x.transpose(1, 0, 2)), lengths=[5, 2, 4], h0=h0)
    dy = rng(23).standard_normal(ya.shape).astype(np.float32)
    ga = a.backward(ra, dy=dy)
    gb = b.backward(rb, dy=np.ascontiguousarray(dy.transpose(1, 0, 2)))
    np.testing.assert_array_equal(gb[0], ga[0].transpose(1, 0, 2))
    np.testing.assert_array_equal(gb[3], ga[3])


def test_outputs_are_new_arrays_owned_by_numpy():
    config = rk.Config("lstm", 3, 4)
    model = rk.Model(config, params_for(config, 1))
    x, _, _ = inputs(config, 3, 2, 2)
    y, hn, cn = model.forward(x)
    for a in (y, hn, cn):
        assert a.flags.c_contiguous and a.flags.writeable and a.dtype == np.float32
    y[...] = 1.0  # writable, and no other call sees it
    np.testing.assert_array_equal(model.forward(x)[1], hn)
    assert model.forward(x)[2].shape == (1, 2, 4)
    # An RNN or a GRU has no cell state.
    g = rk.Model(rk.Config("gru", 3, 4), params_for(rk.Config("gru", 3, 4), 1))
    assert g.forward(x)[2] is None


def test_backward_outputs_can_be_skipped():
    config = rk.Config("lstm", 3, 4, num_layers=2)
    model = rk.Model(config, params_for(config, 1))
    x, _, _ = inputs(config, 3, 2, 2)
    y, _, _, r = model.forward_training(x)
    dy = np.ones_like(y)
    full = model.backward(r, dy=dy)
    dx, dh0, dc0, dp = model.backward(r, dy=dy, need_dx=False, need_dstate=False)
    assert dx is None and dh0 is None and dc0 is None
    np.testing.assert_array_equal(dp, full[3])
    dx, dh0, dc0, dp = model.backward(r, dy=dy, need_dparams=False)
    assert dp is None
    np.testing.assert_array_equal(dx, full[0])
    np.testing.assert_array_equal(dc0, full[2])
    # No upstream gradient at all: zeros.
    dx, dh0, dc0, dp = model.backward(r)
    assert not dx.any() and not dh0.any() and not dc0.any() and not dp.any()


# -- gradients -------------------------------------------------------------------------------


def loss_of(outputs, weights):
    return sum(float(np.sum(o * w)) for o, w in zip(outputs, weights) if o is not None)


@pytest.mark.parametrize(
    "config",
    [
        rk.Config("lstm", 2, 3, num_layers=2, bidirectional=True, proj_size=2),
        rk.Config("gru", 2, 3, num_layers=2, bidirectional=True),
        rk.Config("rnn_tanh", 2, 3, num_layers=2),
        rk.Config("rnn_relu", 3, 2, bidirectional=True, batch_first=True),
        rk.Config("lstm", 2, 3, num_layers=2, dropout=0.4),
    ],
    ids=ids,
)
def test_backward_matches_finite_differences_in_float64(config):
    """Central differences of a weighted sum of the outputs (y, hn, cn) against backward, for every
    parameter and every element of x, h0 and c0, on the float64 reference."""
    p = params_for(config, 31, np.float64, scale=0.6)
    x, h0, c0 = inputs(config, 4, 3, 32, np.float64)
    lengths = [4, 1, 3]
    seed = 1234  # the dropout masks: the same for every evaluation
    model = rk.Model(config, p, backend="reference")
    y, hn, cn, reserve = model.forward_training(x, lengths=lengths, h0=h0, c0=c0, seed=seed)
    r = rng(33)
    weights = [r.standard_normal(a.shape) if a is not None else None for a in (y, hn, cn)]
    dx, dh0, dc0, dparams = model.backward(reserve, dy=weights[0], dhn=weights[1], dcn=weights[2])

    def loss(params=p, x=x, h0=h0, c0=c0):
        m = rk.Model(config, params, backend="reference")
        return loss_of(m.forward_training(x, lengths=lengths, h0=h0, c0=c0, seed=seed)[:3], weights)

    eps = 1e-6

    def numeric(f, a):
        g = np.zeros_like(a)
        for i in range(a.size):
            plus, minus = a.copy(), a.copy()
            plus.flat[i] += eps
            minus.flat[i] -= eps
            g.flat[i] = (f(plus) - f(minus)) / (2 * eps)
        return g

    np.testing.assert_allclose(dparams, numeric(lambda q: loss(params=q), p), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dx, numeric(lambda v: loss(x=v), x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dh0, numeric(lambda v: loss(h0=v), h0), rtol=1e-5, atol=1e-7)
    if c0 is not None:
        np.testing.assert_allclose(dc0, numeric(lambda v: loss(c0=v), c0), rtol=1e-5, atol=1e-7)
    else:
        assert dc0 is None


def test_dropout_masks_follow_the_seed():
    config = rk.Config("lstm", 4, 8, num_layers=3, dropout=0.5)
    model = rk.Model(config, params_for(config, 41))
    x, _, _ = inputs(config, 5, 4, 42)
    a = model.forward_training(x, seed=7)[0]
    b = model.forward_training(x, seed=7)[0]
    c = model.forward_training(x, seed=8)[0]
    d = model.forward_training(x)[0]  # a fresh seed
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    # Inference has no dropout: deterministic, and unlike a training pass.
    np.testing.assert_array_equal(model.forward(x)[0], model.forward(x)[0])
    assert not np.array_equal(model.forward(x)[0], a)
    # Seeds: any 64-bit int, signed (two's complement) or not, NumPy's ints too.
    np.testing.assert_array_equal(model.forward_training(x, seed=-1)[0], model.forward_training(x, seed=2**64 - 1)[0])
    np.testing.assert_array_equal(model.forward_training(x, seed=np.int64(7))[0], a)
    with pytest.raises(ValueError, match="seed"):
        model.forward_training(x, seed=2**64)
    with pytest.raises(TypeError, match="seed"):
        model.forward_training(x, seed=7.0)
    # The same seed gives the same masks on the reference and the CPU backend.
    ref = rk.Model(config, params_for(config, 41), backend="reference")
    np.testing.assert_allclose(ref.forward_training(x, seed=7)[0], a, rtol=1e-5, atol=1e-6)


# -- weights, reserves and plans -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_a_weight_update_between_forward_and_backward_keeps_the_old_weights(backend):
    config = rk.Config("lstm", 4, 6, num_layers=2, bidirectional=True)
    old, new = params_for(config, 51), params_for(config, 52)
    x, h0, c0 = inputs(config, 5, 3, 53)
    model = rk.Model(config, old, backend=backend)
    y, _, _, reserve = model.forward_training(x, lengths=[5, 3, 2], h0=h0, c0=c0)
    dy = rng(54).standard_normal(y.shape).astype(np.float32)
    assert model.plan_generation == 0
    model.update_params(new)  # the reserve holds the old plan: copy on write
    assert model.plan_generation == 1 and model.param_version == 1
    np.testing.assert_array_equal(model.params(), new)
    got = model.backward(reserve, dy=dy)
    reference = rk.Model(config, old, backend=backend)
    _, _, _, r2 = reference.forward_training(x, lengths=[5, 3, 2], h0=h0, c0=c0)
    want = reference.backward(r2, dy=dy)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    # The model computes with the new weights.
    np.testing.assert_array_equal(model.forward(x, h0=h0, c0=c0)[0], rk.Model(config, new, backend=backend).forward(x, h0=h0, c0=c0)[0])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_update_params_in_place_when_no_reserve_holds_the_plan(backend):
    config = rk.Config("gru", 4, 6, num_layers=2)
    a, b = params_for(config, 61), params_for(config, 62)
    x, h0, _ = inputs(config, 5, 3, 63)
    model = rk.Model(config, a, backend=backend)
    _, _, _, reserve = model.forward_training(x)
    reserve.release()  # no longer holds the plan
    del reserve
    _, _, _, reserve = model.forward_training(x)
    model.backward(reserve, dy=np.ones((5, 3, 6), np.float32))
    reserve.release()
    model.update_params(b)
    assert model.plan_generation == 0 and model.param_version == 1
    np.testing.assert_array_equal(model.params(), b)
    np.testing.assert_array_equal(model.forward(x, h0=h0)[0], rk.Model(config, b, backend=backend).forward(x, h0=h0)[0])
    # A dropped (unreleased) reserve lets go of the plan too.
    _, _, _, reserve = model.forward_training(x)
    del reserve
    model.update_params(a)
    assert model.plan_generation == 0
    # A live one does not.
    _, _, _, reserve = model.forward_training(x)
    model.update_params(b)
    assert model.plan_generation == 1


def test_reserve_reuse_and_misuse():
    config = rk.Config("lstm", 4, 6, num_layers=2)
    model = rk.Model(config, params_for(config, 71))
    x, h0, c0 = inputs(config, 5, 3, 72)
    empty = rk.Reserve()
    assert not empty.in_use and empty.nbytes == 0
    with pytest.raises(RuntimeError, match="empty"):
        model.backward(empty)
    y, hn, cn, r = model.forward_training(x, h0=h0, c0=c0, reserve=empty)
    assert r is empty and r.in_use and r.nbytes > 0
    dy = rng(73).standard_normal(y.shape).astype(np.float32)
    first = model.backward(r, dy=dy)
    # Backward again on the same reserve: the same gradients.
    for a, b in zip(first, model.backward(r, dy=dy)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeError, match="in use"):
        model.forward_training(x, reserve=r)
    nbytes = r.nbytes
    r.release()
    assert not r.in_use and r.nbytes == nbytes
    with pytest.raises(RuntimeError, match="released"):
        model.backward(r, dy=dy)
    # Refilled: the same results as a new reserve, in the same memory.
    y2, _, _, r2 = model.forward_training(x, h0=h0, c0=c0, reserve=r)
    assert r2 is r and r.nbytes == nbytes
    np.testing.assert_array_equal(y2, y)
    for a, b in zip(first, model.backward(r, dy=dy)):
        np.testing.assert_array_equal(a, b)
    # Another model's reserve.
    other = rk.Model(config, params_for(config, 71))
    with pytest.raises(RuntimeError, match="another Model"):
        other.backward(r, dy=dy)
    # A reserve of another shape or dtype is refilled all the same.
    r.release()
    x_small, _, _ = inputs(config, 2, 1, 74)
    assert model.forward_training(x_small, reserve=r)[3] is r
    r.release()
    m64 = rk.Model(config, params_for(config, 71, np.float64), backend="reference")
    m64.forward_training(x.astype(np.float64), reserve=r)
    assert m64.backward(r)[3].dtype == np.float64
    with pytest.raises(TypeError, match="reserve"):
        model.backward(np.zeros(3))


def test_params_round_trip_and_copy():
    config = rk.Config("rnn_relu", 3, 4, num_layers=2, bidirectional=True)
    p = params_for(config, 81)
    model = rk.Model(config, p)
    q = model.params()
    np.testing.assert_array_equal(q, p)
    q[0] = 99.0  # a copy
    assert model.params()[0] == p[0]
    p[0] = 42.0  # the model keeps its own copy
    assert model.params()[0] != 42.0


def test_safetensors_round_trip(tmp_path):
    config = rk.Config("lstm", 5, 6, num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
    p = params_for(config, 91)
    path = tmp_path / "model.safetensors"
    rk.save_safetensors(path, config, p)
    c2, p2 = rk.load_safetensors(str(path))
    assert c2 == config and p2.dtype == np.float32
    np.testing.assert_array_equal(p2, p)
    c3, p3 = rk.load_safetensors(path, dtype="float64")
    assert c3 == config and p3.dtype == np.float64
    np.testing.assert_array_equal(p3, p.astype(np.float64))
    # float64 parameters are written as float64.
    rk.save_safetensors(path, config, p3)
    np.testing.assert_array_equal(rk.load_safetensors(path, dtype="float64")[1], p3)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        rk.load_safetensors(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        rk.load_safetensors(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="params"):
        rk.save_safetensors(path, config, p[:-1])
    with pytest.raises(ValueError, match="dtype"):
        rk.load_safetensors(path, dtype="float16")


def test_model_properties_and_pickle():
    config = rk.Config("gru", 3, 4)
    m = rk.Model(config, params_for(config, 1), backend="cpu", threads=2, isa="scalar")
    assert (m.dtype, m.backend, m.isa, m.threads) == ("float32", "cpu", "scalar", 2)
    assert m.config == config
    r = rk.Model(config, params_for(config, 1, np.float64), backend="reference")
    assert (r.dtype, r.backend, r.isa, r.threads) == ("float64", "reference", None, 1)
    for model in (m, r):
        copy = pickle.loads(pickle.dumps(model))
        assert (copy.dtype, copy.backend, copy.isa, copy.threads) == (model.dtype, model.backend, model.isa, model.threads)
        np.testing.assert_array_equal(copy.params(), model.params())
    assert "backend='cpu'" in repr(m)


def test_calls_from_several_python_threads():
    config = rk.Config("lstm", 8, 16, num_layers=2)
    model = rk.Model(config, params_for(config, 101), threads=1)
    x, h0, c0 = inputs(config, 20, 8, 102)
    want = model.forward(x, h0=h0, c0=c0)[0]
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(model.forward(x, h0=h0, c0=c0)[0])
                y, _, _, r = model.forward_training(x, h0=h0, c0=c0)
                model.backward(r, dy=np.ones_like(y))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for y in results:
        np.testing.assert_array_equal(y, want)


# -- bad inputs ------------------------------------------------------------------------------


@pytest.fixture
def lstm():
    config = rk.Config("lstm", 4, 5, num_layers=2)
    model = rk.Model(config, params_for(config, 111))
    x, h0, c0 = inputs(config, 3, 2, 112)
    return model, x, h0, c0


def test_model_refuses_bad_construction_arguments():
    config = rk.Config("lstm", 4, 5)
    p = params_for(config, 1)
    with pytest.raises(TypeError, match="params.*float32"):
        rk.Model(config, p.astype(np.int32))
    with pytest.raises(TypeError, match="params.*float64"):
        rk.Model(config, p.astype(np.float64), backend="cpu")
    with pytest.raises(TypeError, match="params"):
        rk.Model(config, list(p))
    with pytest.raises(ValueError, match="params.*shape"):
        rk.Model(config, p[:-1])
    with pytest.raises(ValueError, match="params.*C-contiguous"):
        rk.Model(config, np.repeat(p, 2)[::2])
    with pytest.raises(ValueError, match="backend"):
        rk.Model(config, p, backend="gpu")
    if "cuda" not in rk.backends():
        with pytest.raises(ValueError, match="cuda"):
            rk.Model(config, p, backend="cuda")
    with pytest.raises(ValueError, match="threads"):
        rk.Model(config, p, threads=0)
    with pytest.raises(ValueError, match="isa"):
        rk.Model(config, p, isa="sse9")
    with pytest.raises(ValueError, match="isa"):
        rk.Model(config, p, backend="reference", isa="scalar")


def test_forward_refuses_bad_arrays_naming_them(lstm):
    model, x, h0, c0 = lstm
    with pytest.raises(TypeError, match=r"`x`.*float32.*float64"):
        model.forward(x.astype(np.float64))
    with pytest.raises(TypeError, match="`x`"):
        model.forward(x.tolist())
    with pytest.raises(ValueError, match=r"`x`.*C-contiguous"):
        model.forward(np.asfortranarray(x))
    with pytest.raises(ValueError, match=r"`x`.*C-contiguous"):
        model.forward(np.repeat(x, 2, axis=1)[:, ::2])
    with pytest.raises(ValueError, match=r"`x`.*\(3, 2, 3\)"):
        model.forward(np.ascontiguousarray(x[:, :, :3]))
    with pytest.raises(ValueError, match="`x`"):
        model.forward(x[0])
    with pytest.raises(ValueError, match="`x`"):
        model.forward(np.zeros((0, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"`h0`.*\(2, 2, 5\).*\(2, 3, 5\)"):
        model.forward(x, h0=np.zeros((2, 3, 5), np.float32))
    with pytest.raises(TypeError, match="`h0`"):
        model.forward(x, h0=h0.astype(np.float16))
    with pytest.raises(ValueError, match="`c0`"):
        model.forward(x, c0=np.zeros((1, 2, 5), np.float32))
    with pytest.raises(ValueError, match="`c0`"):
        model.forward_training(x, c0=np.zeros((2, 2, 4), np.float32))
    gru = rk.Model(rk.Config("gru", 4, 5, num_layers=2), params_for(rk.Config("gru", 4, 5, num_layers=2), 1))
    with pytest.raises(ValueError, match=r"`c0`.*no cell state"):
        gru.forward(x, c0=c0)
    _, _, _, r = gru.forward_training(x)
    with pytest.raises(ValueError, match=r"`dcn`.*no cell state"):
        gru.backward(r, dcn=c0)


@pytest.mark.parametrize(
    "lengths, arg, exc",
    [
        ([3], "lengths", ValueError),
        ([3, 2, 1], "lengths", ValueError),
        ([3, 0], r"lengths\[1\]", ValueError),
        ([4, 2], r"lengths\[0\]", ValueError),
        ([-1, 2], r"lengths\[0\]", ValueError),
        ([2.5, 1.0], "lengths", TypeError),
        (np.array([2.0, 1.0]), "lengths", TypeError),
        (np.array([[3, 2]]), "lengths", TypeError),
        ("32", "lengths", TypeError),
        (3, "lengths", TypeError),
    ],
)
def test_forward_refuses_bad_lengths_naming_them(lstm, lengths, arg, exc):
    model, x, _, _ = lstm
    with pytest.raises(exc, match=arg):
        model.forward(x, lengths=lengths)
    with pytest.raises(exc, match=arg):
        model.forward_training(x, lengths=lengths)


def test_backward_and_update_refuse_bad_arrays_naming_them(lstm):
    model, x, h0, c0 = lstm
    y, hn, cn, r = model.forward_training(x)
    with pytest.raises(ValueError, match=r"`dy`.*shape"):
        model.backward(r, dy=np.zeros((3, 2, 4), np.float32))
    with pytest.raises(TypeError, match=r"`dy`.*float64"):
        model.backward(r, dy=y.astype(np.float64))
    with pytest.raises(ValueError, match=r"`dhn`"):
        model.backward(r, dhn=np.zeros((1, 2, 5), np.float32))
    with pytest.raises(ValueError, match=r"`dcn`"):
        model.backward(r, dcn=np.zeros((2, 2, 4), np.float32))
    with pytest.raises(ValueError, match="threads"):
        model.backward(r, dy=y, threads=0)
    with pytest.raises(ValueError, match="threads"):
        model.forward(x, threads=-2)
    with pytest.raises(ValueError, match="`params`"):
        model.update_params(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="`params`"):
        model.update_params(np.zeros(model.config.param_count, np.float64))
    # Nothing was changed by the refused calls.
    assert model.param_version == 0
    np.testing.assert_array_equal(model.backward(r, dy=y)[3], model.backward(r, dy=y)[3])
