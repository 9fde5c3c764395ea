"""The GPU backend from Python (``backend="cuda"``, a wheel built with ``--features cuda``)
against the float64 reference: inference, training and backward, the options, dropout from a
seed and the caller's masks, reserves, decoder steps and attention.

The GPU tests need a build with CUDA and a GPU. Without either they are skipped with a reason
saying which is missing, except where the environment variable RNN_KERNELS_REQUIRE_CUDA is 1 (as
``.ci/gpu.sh`` sets on the GPU machine): there a missing GPU fails them. The tests of what a
build without CUDA, or a machine without a GPU, answers run everywhere.
"""

import os

import numpy as np
import pytest

import rnn_kernels as rk

HAS_CUDA_BUILD = "cuda" in rk.backends()

CONFIGS = [
    rk.Config("lstm", 5, 7, num_layers=2, bidirectional=True),
    rk.Config("lstm", 5, 8, num_layers=2, bidirectional=True, proj_size=3),
    rk.Config("gru", 4, 6, num_layers=2, batch_first=True),
    rk.Config("gru", 3, 4, num_layers=2, linear_before_reset=False, gate_clip=0.5, direction="bidirectional"),
    rk.Config("rnn_tanh", 4, 6, num_layers=3, bias=False),
    rk.Config("rnn_relu", 3, 4, num_layers=2, bidirectional=True, merge="sum", batch_first=True),
    rk.Config("lstm", 3, 5, num_layers=2, layer_norm=True, peephole=True, proj_size=2),
    rk.Config("lstm", 3, 4, num_layers=2, bidirectional=True, peephole=True, gate_clip=0.6, input_forget=True),
]
MASKED = [
    rk.Config("lstm", 3, 4, num_layers=2, dropout=0.2, zoneout=0.3, recurrent_dropout=0.25, input_dropout=0.2),
    rk.Config("gru", 3, 4, num_layers=2, bidirectional=True, input_dropout=0.3, dropout=0.3),
    rk.Config("lstm", 3, 4, zoneout=0.3, zoneout_cell=0.2),
]


def ids(c):
    return repr(c)


def rng(seed):
    return np.random.default_rng(seed)


def params_for(config, seed, dtype=np.float64):
    k = 1.0 / np.sqrt(config.hidden_size)
    return rng(seed).uniform(-k, k, config.param_count).astype(dtype)


def inputs(config, steps, batch, seed, dtype=np.float64):
    r = rng(seed)
    shape = (batch, steps, config.input_size) if config.batch_first else (steps, batch, config.input_size)
    x = r.standard_normal(shape).astype(dtype)
    lds = config.num_layers * config.num_directions
    h0 = (0.5 * r.standard_normal((lds, batch, config.state_size))).astype(dtype)
    c0 = (0.5 * r.standard_normal((lds, batch, config.hidden_size))).astype(dtype) if config.mode == "lstm" else None
    return x, h0, c0


def f32(a):
    return None if a is None else a.astype(np.float32)


def gpu_missing():
    """Why the GPU tests cannot run here, or None when they can."""
    if not HAS_CUDA_BUILD:
        return "this build of rnn_kernels has no CUDA backend (build the wheel with maturin's --features cuda)"
    c = rk.Config("lstm", 2, 3)
    try:
        rk.Model(c, np.zeros(c.param_count, np.float32), backend="cuda")
    except RuntimeError as e:
        return f"no GPU here: {e}"
    return None


@pytest.fixture(scope="module")
def gpu():
    why = gpu_missing()
    if why is not None:
        if os.environ.get("RNN_KERNELS_REQUIRE_CUDA") == "1":
            pytest.fail(f"RNN_KERNELS_REQUIRE_CUDA=1 but {why}")
        pytest.skip(why)


def run_all(model, x, h0, c0, lengths, seed=None, masks=None, dy_seed=7):
    """Forward (inference and training) and backward with random upstream gradients."""
    inference = model.forward(x, lengths=lengths, h0=h0, c0=c0)
    kw = {"masks": masks} if masks is not None else {"seed": seed}
    y, hn, cn, reserve = model.forward_training(x, lengths=lengths, h0=h0, c0=c0, **kw)
    r = rng(dy_seed)
    dy = r.standard_normal(y.shape).astype(y.dtype)
    dhn = r.standard_normal(hn.shape).astype(y.dtype)
    dcn = r.standard_normal(cn.shape).astype(y.dtype) if cn is not None else None
    grads = model.backward(reserve, dy=dy, dhn=dhn, dcn=dcn)
    return inference, (y, hn, cn), grads


def assert_close_parts(got, want, rtol=2e-4, atol=2e-5):
    for g_part, w_part in zip(got, want):
        for g, w in zip(g_part, w_part):
            assert (g is None) == (w is None)
            if w is not None:
                assert g.dtype == np.float32 and g.shape == w.shape
                np.testing.assert_allclose(g, w.astype(np.float64), rtol=rtol, atol=atol)


# -- without a GPU ---------------------------------------------------------------------------


def test_cuda_construction_errors_name_the_argument():
    c = rk.Config("lstm", 2, 3)
    p = np.zeros(c.param_count, np.float32)
    if not HAS_CUDA_BUILD:
        with pytest.raises(ValueError, match=r"backend.*no CUDA backend"):
            rk.Model(c, p, backend="cuda")
        with pytest.raises(ValueError, match="backend"):
            rk.Attention(rk.AttentionConfig("dot", 3, 3), np.zeros(0, np.float32), backend="cuda")
        return
    # Checked before the device is opened: the same answer with or without a GPU.
    with pytest.raises(TypeError, match=r"params.*float32.*cuda"):
        rk.Model(c, p.astype(np.float64), backend="cuda")
    with pytest.raises(ValueError, match="isa"):
        rk.Model(c, p, backend="cuda", isa="avx2")
    with pytest.raises(TypeError, match=r"params.*float32.*cuda"):
        rk.Attention(rk.AttentionConfig("dot", 3, 3), np.zeros(0, np.float64), backend="cuda")


# -- on the GPU ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_cuda_agrees_with_reference_float64(gpu, config):
    p64 = params_for(config, 1)
    x, h0, c0 = inputs(config, 6, 3, 2)
    lengths = [6, 2, 4]
    ref = rk.Model(config, p64, backend="reference")
    cuda = rk.Model(config, f32(p64), backend="cuda")
    assert cuda.backend == "cuda" and cuda.dtype == "float32"
    want = run_all(ref, x, h0, c0, lengths)
    got = run_all(cuda, f32(x), f32(h0), f32(c0), lengths)
    assert_close_parts(got, want)
    # Inference and the training forward give the same outputs, and every call the same bits.
    for a, b in zip(got[0], got[1]):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    again = run_all(cuda, f32(x), f32(h0), f32(c0), lengths)
    for g_part, a_part in zip(got, again):
        for g, a in zip(g_part, a_part):
            if g is not None:
                np.testing.assert_array_equal(g, a)


@pytest.mark.parametrize("config", MASKED, ids=ids)
def test_cuda_masks_from_a_seed_and_supplied_are_the_references(gpu, config):
    p64 = params_for(config, 3)
    x, h0, c0 = inputs(config, 5, 4, 4)
    lengths = [5, 3, 1, 4]
    ref = rk.Model(config, p64, backend="reference")
    cuda = rk.Model(config, f32(p64), backend="cuda")
    # Every backend draws the same masks from a seed.
    want = run_all(ref, x, h0, c0, lengths, seed=11)
    got = run_all(cuda, f32(x), f32(h0), f32(c0), lengths, seed=11)
    assert_close_parts(got[1:], want[1:])
    # The seed's masks read back and supplied give its bits; other masks another pass.
    masks = cuda.read_masks(x.shape[0], x.shape[1], 11)
    supplied = run_all(cuda, f32(x), f32(h0), f32(c0), lengths, masks=masks)
    for g_part, s_part in zip(got[1:], supplied[1:]):
        for g, s in zip(g_part, s_part):
            if g is not None:
                np.testing.assert_array_equal(g, s)
    flipped = {k: ~v for k, v in masks.items()}
    other = run_all(cuda, f32(x), f32(h0), f32(c0), lengths, masks=flipped)
    assert not np.array_equal(other[1][0], got[1][0])
    # One row where the call reads four (contiguous, so that only the extent is wrong).
    short = {k: np.ascontiguousarray(v[:, :1]) for k, v in masks.items()}
    with pytest.raises(ValueError, match="masks"):
        cuda.forward_training(f32(x), lengths=lengths, h0=f32(h0), c0=f32(c0), masks=short)


def test_cuda_reserves_keep_their_weights_and_refill(gpu):
    config = rk.Config("lstm", 4, 6, num_layers=2)
    p = params_for(config, 5, np.float32)
    x, h0, c0 = inputs(config, 5, 3, 6, np.float32)
    m = rk.Model(config, p, backend="cuda")
    y1, _, _, r1 = m.forward_training(x, h0=h0, c0=c0)
    assert r1.in_use and r1.nbytes > 0
    m.update_params(p * 0.5)
    y2, _, _, r2 = m.forward_training(x, h0=h0, c0=c0)
    assert not np.array_equal(y1, y2)
    dy = rng(1).standard_normal(y1.shape).astype(np.float32)
    # r1 backpropagates through the weights it was computed with, after the update.
    g1 = m.backward(r1, dy=dy)
    fresh = rk.Model(config, p, backend="cuda")
    _, _, _, rf = fresh.forward_training(x, h0=h0, c0=c0)
    for a, b in zip(g1, fresh.backward(rf, dy=dy)):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.params(), p * 0.5)
    # A released reserve refills with the next pass and keeps its memory.
    r1.release()
    assert not r1.in_use
    m.forward_training(x, h0=h0, c0=c0, reserve=r1)
    assert r1.in_use
    m.backward(r2, dy=dy)
    with pytest.raises(RuntimeError, match="reserve"):
        m.forward_training(x, h0=h0, c0=c0, reserve=r1)
    # A reserve of a CUDA model is refused by another model.
    with pytest.raises(RuntimeError, match="reserve"):
        fresh.backward(r1, dy=dy)


@pytest.mark.parametrize("config", [rk.Config("lstm", 3, 5, num_layers=2, proj_size=2), rk.Config("gru", 4, 6, num_layers=2)], ids=ids)
def test_cuda_decoder_steps_are_the_whole_call(gpu, config):
    p = params_for(config, 7, np.float32)
    steps, batch = 5, 3
    x, h0, c0 = inputs(config, steps, batch, 8, np.float32)
    h0, c0 = h0[: config.num_layers], (c0[: config.num_layers] if c0 is not None else None)
    m = rk.Model(config, p, backend="cuda")
    y, hn, cn, res = m.forward_training(x, h0=h0, c0=c0)
    dy = rng(9).standard_normal(y.shape).astype(np.float32)
    dhn = rng(10).standard_normal(hn.shape).astype(np.float32)
    dx, dh0, dc0, dp = m.backward(res, dy=dy, dhn=dhn)
    s = m.start_steps(batch, h0=h0, c0=c0, training=True)
    for t in range(steps):
        np.testing.assert_allclose(s.step(x[t]), y[t], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.h, hn, rtol=1e-5, atol=1e-5)
    b = m.backward_steps(s, dhn=dhn)
    dxs = [b.step(dy[t]) for t in reversed(range(steps))]
    sdh0, sdc0, sdp = b.finish()
    np.testing.assert_allclose(np.stack(dxs[::-1]), dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sdh0, dh0, rtol=1e-4, atol=1e-5)
    if dc0 is not None:
        np.testing.assert_allclose(sdc0, dc0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sdp, dp, rtol=1e-4, atol=1e-4)
    # Beam search: an inference run reordered is the run of the reordered batch.
    s = m.start_steps(batch, h0=h0, c0=c0)
    s.step(x[0])
    s.reorder([2, 0, 2, 1])
    assert s.batch_size == 4
    y1 = s.step(x[1][[2, 0, 2, 1]])
    assert y1.shape == (4, config.state_size)


@pytest.mark.parametrize("score", ["dot", "general", "concat", "additive"])
def test_cuda_attention_agrees_with_reference_float64(gpu, score):
    hq = hk = 4
    cfg = rk.AttentionConfig(score, hq, hk, attn_size=3 if score in ("concat", "additive") else None, output_size=5)
    r = rng(0)
    params = r.uniform(-0.5, 0.5, cfg.param_count)
    keys = r.standard_normal((5, 3, hk))
    queries = r.standard_normal((2, 3, hq))
    gh, gc, gw = r.standard_normal((2, 3, 5)), r.standard_normal((2, 3, hk)), r.standard_normal((2, 3, 5))
    lengths = [5, 2, 3]
    ref = rk.Attention(cfg, params, backend="reference")
    cuda = rk.Attention(cfg, f32(params), backend="cuda")
    assert cuda.backend == "cuda"
    want = ref.forward(ref.memory(keys, lengths), queries)
    got = cuda.forward(cuda.memory(f32(keys), lengths), f32(queries))
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    want = ref.backward(ref.memory(keys, lengths), queries, d_hidden=gh, d_context=gc, d_weights=gw)
    got = cuda.backward(cuda.memory(f32(keys), lengths), f32(queries), d_hidden=f32(gh), d_context=f32(gc), d_weights=f32(gw))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_cuda_bad_arrays_are_errors_naming_them(gpu):
    config = rk.Config("lstm", 3, 4)
    m = rk.Model(config, params_for(config, 0, np.float32), backend="cuda")
    x = np.zeros((2, 2, 3), np.float32)
    with pytest.raises(TypeError, match="x"):
        m.forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="x"):
        m.forward(np.zeros((2, 2, 4), np.float32))
    with pytest.raises(ValueError, match="h0"):
        m.forward(x, h0=np.zeros((1, 3, 4), np.float32))
    with pytest.raises(ValueError, match="lengths"):
        m.forward(x, lengths=[3, 1])
