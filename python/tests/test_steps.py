"""Decoder steps: Model.start_steps, Steps.step / reorder, Model.backward_steps.

Teacher forcing step by step is one forward call over the sequence: bit for bit on the float64
reference, within 1e-5 on the float32 CPU backend (its one-step calls block the products
otherwise than a call over the sequence; the tolerance of the library's tests/decoder_steps.rs);
the backward through the steps gives that call's backward: dx, dh0, dc0 and dparams bit for bit
on the float64 reference (the parameters' gradients are one product per weight over all the
steps, as the call's), within 1e-5 (dparams 1e-4) on the float32 CPU backend; a reorder is the
run of the reordered batch; after a backward the run goes on, and the next backward walks the
steps since as a fresh run from their first state (truncated BPTT); misuse is an error naming the
argument.
"""

import numpy as np
import pytest

import rnn_kernels as rk

CONFIGS = [
    rk.Config("lstm", 3, 5, num_layers=2, proj_size=2),
    rk.Config("gru", 4, 6, num_layers=2),
]
BACKENDS = [("reference", np.float64), ("cpu", np.float32)]


def setup(config, dtype, seed=0, steps=5, batch=3):
    r = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(config.hidden_size)
    params = r.uniform(-k, k, config.param_count).astype(dtype)
    x = r.standard_normal((steps, batch, config.input_size)).astype(dtype)
    h0 = (0.5 * r.standard_normal((config.num_layers, batch, config.state_size))).astype(dtype)
    c0 = (0.5 * r.standard_normal((config.num_layers, batch, config.hidden_size))).astype(dtype) if config.mode == "lstm" else None
    dy = r.standard_normal((steps, batch, config.state_size)).astype(dtype)
    dhn = r.standard_normal(h0.shape).astype(dtype)
    dcn = r.standard_normal(c0.shape).astype(dtype) if c0 is not None else None
    return params, x, h0, c0, dy, dhn, dcn


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def ids(c):
    return f"{c.mode}-L{c.num_layers}"


@pytest.mark.parametrize("backend,dtype", BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=ids)
@pytest.mark.parametrize("training", [False, True])
def test_teacher_forcing_is_one_forward_call(config, backend, dtype, training):
    same = np.testing.assert_array_equal if dtype == np.float64 else close
    params, x, h0, c0, *_ = setup(config, dtype)
    m = rk.Model(config, params, backend=backend)
    y, hn, cn = m.forward(x, h0=h0, c0=c0)
    s = m.start_steps(x.shape[1], h0=h0, c0=c0, training=training)
    assert s.training == training and s.next_step == 0 and s.batch_size == x.shape[1]
    for t in range(x.shape[0]):
        yt = s.step(x[t])
        assert yt.shape == (x.shape[1], config.state_size) and yt.dtype == dtype
        same(yt, y[t])
    assert s.next_step == x.shape[0]
    same(s.h, hn)
    if cn is None:
        assert s.c is None
    else:
        same(s.c, cn)


@pytest.mark.parametrize("backend,dtype", BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_backward_through_the_steps_is_backward_of_one_call(config, backend, dtype):
    params, x, h0, c0, dy, dhn, dcn = setup(config, dtype)
    m = rk.Model(config, params, backend=backend)
    _, _, _, res = m.forward_training(x, h0=h0, c0=c0)
    dx, dh0, dc0, dp = m.backward(res, dy=dy, dhn=dhn, dcn=dcn)
    s = m.start_steps(x.shape[1], h0=h0, c0=c0, training=True)
    for t in range(x.shape[0]):
        s.step(x[t])
    b = m.backward_steps(s, dhn=dhn, dcn=dcn)
    dxs = []
    for t in reversed(range(x.shape[0])):
        assert b.next_step == t
        dxs.append(b.step(dy[t]))
    assert b.next_step is None
    sdh0, sdc0, sdp = b.finish()
    sdx = np.stack(dxs[::-1])
    if dtype == np.float64:
        np.testing.assert_array_equal(sdx, dx)
        np.testing.assert_array_equal(sdh0, dh0)
        if dc0 is not None:
            np.testing.assert_array_equal(sdc0, dc0)
        np.testing.assert_array_equal(sdp, dp)
    else:
        for a, b_ in [(sdx, dx), (sdh0, dh0), (sdc0, dc0)]:
            if b_ is not None:
                close(a, b_)
        np.testing.assert_allclose(sdp, dp, rtol=1e-4, atol=1e-4)
    assert (sdc0 is None) == (config.mode != "lstm")


def test_dropout_steps_draw_the_masks_of_one_call():
    config = rk.Config("lstm", 3, 5, num_layers=2, dropout=0.5)
    params, x, h0, c0, dy, *_ = setup(config, np.float64)
    m = rk.Model(config, params, backend="reference")
    y, hn, cn, res = m.forward_training(x, h0=h0, c0=c0, seed=11)
    s = m.start_steps(x.shape[1], h0=h0, c0=c0, training=True, seed=11)
    for t in range(x.shape[0]):
        np.testing.assert_array_equal(s.step(x[t]), y[t])
    dx, dh0, dc0, dp = m.backward(res, dy=dy)
    b = m.backward_steps(s)
    sdx = [b.step(dy[t]) for t in reversed(range(x.shape[0]))][::-1]
    sdh0, sdc0, sdp = b.finish()
    np.testing.assert_array_equal(np.stack(sdx), dx)
    np.testing.assert_array_equal(sdh0, dh0)
    np.testing.assert_array_equal(sdp, dp)


def test_steps_read_the_callers_masks_at_their_own_step():
    """Masks read back from a seed and supplied to the steps: each step reads its own step's (the
    whole call's outputs and gradients with the same masks, bit for bit on the reference); the
    masks of one step too few are a ValueError naming masks at the step that lacks them."""
    config = rk.Config("lstm", 3, 5, num_layers=2, dropout=0.5, zoneout=0.3, zoneout_cell=0.2, recurrent_dropout=0.3)
    params, x, h0, c0, dy, *_ = setup(config, np.float64)
    m = rk.Model(config, params, backend="reference")
    steps, batch = x.shape[0], x.shape[1]
    masks = m.read_masks(steps, batch, seed=11)
    y, hn, cn, res = m.forward_training(x, h0=h0, c0=c0, masks=masks)
    s = m.start_steps(batch, h0=h0, c0=c0, training=True, masks=masks)
    for t in range(steps):
        np.testing.assert_array_equal(s.step(x[t]), y[t])
    dx, dh0, dc0, dp = m.backward(res, dy=dy)
    b = m.backward_steps(s)
    sdx = [b.step(dy[t]) for t in reversed(range(steps))][::-1]
    sdh0, sdc0, sdp = b.finish()
    np.testing.assert_array_equal(np.stack(sdx), dx)
    np.testing.assert_array_equal(sdh0, dh0)
    np.testing.assert_array_equal(sdp, dp)
    short = m.read_masks(steps - 1, batch, seed=11)
    s = m.start_steps(batch, h0=h0, c0=c0, training=True, masks=short)
    for t in range(steps - 1):
        s.step(x[t])
    with pytest.raises(ValueError, match="masks"):
        s.step(x[steps - 1])
    with pytest.raises(ValueError, match="masks"):
        m.start_steps(batch, training=True, masks=masks, seed=3)


@pytest.mark.parametrize("backend,dtype", BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_reorder_is_stepping_the_reordered_batch(config, backend, dtype):
    # Bits on the reference; the CPU backend blocks a batch of 4 rows otherwise than one of 3.
    same = np.testing.assert_array_equal if dtype == np.float64 else close
    params, x, h0, c0, *_ = setup(config, dtype, batch=3)
    m = rk.Model(config, params, backend=backend)
    s = m.start_steps(3, h0=h0, c0=c0)
    s.step(x[0])
    s.step(x[1])
    rows = [2, 0, 0, 1]
    s.reorder(np.array(rows))
    assert s.batch_size == 4
    # The same rows, run on their own from the start.
    r = m.start_steps(4, h0=np.ascontiguousarray(h0[:, rows]), c0=None if c0 is None else np.ascontiguousarray(c0[:, rows]))
    r.step(np.ascontiguousarray(x[0][rows]))
    r.step(np.ascontiguousarray(x[1][rows]))
    same(s.h, r.h)
    if c0 is not None:
        same(s.c, r.c)
    x2 = np.ascontiguousarray(x[2][rows])
    same(s.step(x2), r.step(x2))


def test_errors_name_the_argument():
    config = CONFIGS[0]
    params, x, h0, c0, dy, *_ = setup(config, np.float32)
    m = rk.Model(config, params)
    with pytest.raises(ValueError, match="`batch`"):
        m.start_steps(0)
    with pytest.raises(ValueError, match="`h0`"):
        m.start_steps(2, h0=h0)
    with pytest.raises(TypeError, match="`h0`"):
        m.start_steps(3, h0=h0.astype(np.float64))
    s = m.start_steps(3, h0=h0, c0=c0)
    with pytest.raises(ValueError, match="`x`"):
        s.step(x[0][:2])
    with pytest.raises(ValueError, match="`x`"):
        s.step(x[:2])
    with pytest.raises(TypeError, match="`x`"):
        s.step(x[0].astype(np.float64))
    s.step(x[0])
    with pytest.raises(ValueError, match="`steps`"):
        m.backward_steps(s)
    with pytest.raises(ValueError, match=r"`rows\[1\]`"):
        s.reorder([0, 3])
    with pytest.raises(ValueError, match="`rows`"):
        s.reorder([])
    gru = rk.Model(rk.Config("gru", 3, 4), np.zeros(rk.Config("gru", 3, 4).param_count, np.float32))
    with pytest.raises(ValueError, match="`c0`"):
        gru.start_steps(1, c0=np.zeros((1, 1, 4), np.float32))
    bi = rk.Config("gru", 3, 4, bidirectional=True)
    with pytest.raises(ValueError, match="`config`"):
        rk.Model(bi, np.zeros(bi.param_count, np.float32)).start_steps(1)

    t = m.start_steps(3, h0=h0, c0=c0, training=True)
    with pytest.raises(ValueError, match="`steps`"):
        m.backward_steps(t)  # no step yet
    t.step(x[0])
    t.step(x[1])
    with pytest.raises(ValueError, match="`steps`"):
        t.reorder([0, 1, 2])
    with pytest.raises(ValueError, match="`steps`"):
        gru.backward_steps(t)
    with pytest.raises(ValueError, match="`dhn`"):
        m.backward_steps(t, dhn=np.zeros((2, 2, 2), np.float32))
    b = m.backward_steps(t)
    with pytest.raises(ValueError, match="`steps`"):
        m.backward_steps(t)  # the walk took every step
    with pytest.raises(RuntimeError, match="`bsteps`"):
        b.finish()
    with pytest.raises(ValueError, match="`dy`"):
        b.step(np.zeros((2, 2), np.float32))
    b.step(dy[1])
    b.step()
    with pytest.raises(RuntimeError, match="`bsteps`"):
        b.step()
    b.finish()
    with pytest.raises(RuntimeError, match="`bsteps`"):
        b.finish()


@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_truncated_backpropagation_through_the_steps(config):
    # After backward_steps the run goes on from its state; the next backward_steps walks the steps
    # since, as the backward of a fresh run from the state they started at (bits, reference).
    params, x, h0, c0, dy, dhn, dcn = setup(config, np.float64, steps=5)
    m = rk.Model(config, params, backend="reference")
    s = m.start_steps(x.shape[1], h0=h0, c0=c0, training=True)
    for t in range(3):
        s.step(x[t])
    first = m.backward_steps(s)
    for t in reversed(range(3)):
        first.step(dy[t])
    first.finish()
    assert s.training and s.next_step == 3
    fresh = m.start_steps(x.shape[1], h0=s.h, c0=s.c, training=True)
    for t in range(3, 5):
        np.testing.assert_array_equal(s.step(x[t]), fresh.step(x[t]))
    a, b = m.backward_steps(s, dhn=dhn, dcn=dcn), m.backward_steps(fresh, dhn=dhn, dcn=dcn)
    assert a.next_step == 1
    for t in reversed(range(3, 5)):
        np.testing.assert_array_equal(a.step(dy[t]), b.step(dy[t]))
    for u, v in zip(a.finish(), b.finish()):
        if v is None:
            assert u is None
        else:
            np.testing.assert_array_equal(u, v)


def test_a_run_keeps_the_weights_it_started_with():
    config = CONFIGS[1]
    params, x, h0, *_ = setup(config, np.float32)
    m = rk.Model(config, params)
    y, _, _ = m.forward(x[:1], h0=h0)
    s = m.start_steps(x.shape[1], h0=h0)
    m.update_params(np.zeros_like(params))
    np.testing.assert_array_equal(s.step(x[0]), y[0])
