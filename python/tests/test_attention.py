"""Attention: AttentionConfig, Attention.memory / forward / backward.

For each score (dot, general, concat, additive): the float32 CPU backend agrees with the float64
reference within 1e-5 on the outputs and 1e-4 on the gradients; the float64 reference's backward
agrees with central differences (eps 1e-6, rtol 1e-6) at a few coordinates of the queries, the
keys and every parameter tensor; the weights are a softmax masked to each sequence's length
(exactly 0 past it), and the keys past a length have no effect and a zero gradient; misuse is an
error naming the argument. With torch installed, Luong's general score and tanh(W_c [c; h]) in a
few lines of torch give the same outputs. forward_training gives forward's outputs bit for bit,
and backward with its saved state the recomputing backward's gradients bit for bit, on both
backends, any number of times; a saved state used with another Attention, dtype, memory or
queries is an error naming the argument.
"""

import numpy as np
import pytest

import rnn_kernels as rk
from conftest import TORCH_MISSING

SCORES = ["dot", "general", "concat", "additive"]
HQ, HK, A, O = 4, 4, 3, 5  # dot needs Hq = Hk
S, B, TQ = 5, 3, 2
LENGTHS = [5, 2, 3]


def config(score, output_size=O):
    return rk.AttentionConfig(score, HQ, HK, attn_size=A if score in ("concat", "additive") else None, output_size=output_size)


def data(cfg, seed=0, dtype=np.float64):
    r = np.random.default_rng(seed)
    params = r.uniform(-0.5, 0.5, cfg.param_count).astype(dtype)
    keys = r.standard_normal((S, B, HK)).astype(dtype)
    queries = r.standard_normal((TQ, B, HQ)).astype(dtype)
    gh = r.standard_normal((TQ, B, cfg.output_size)).astype(dtype) if cfg.output_size else None
    gc = r.standard_normal((TQ, B, HK)).astype(dtype)
    gw = r.standard_normal((TQ, B, S)).astype(dtype)
    return params, keys, queries, gh, gc, gw


def loss(att, keys, queries, gh, gc, gw):
    h, c, w = att.forward(att.memory(keys, LENGTHS), queries)
    total = np.sum(c * gc) + np.sum(w * gw)
    return total + (np.sum(h * gh) if h is not None else 0.0)


def test_config_and_param_specs():
    cfg = rk.AttentionConfig("additive", 4, 6, attn_size=3, output_size=5)
    assert (cfg.score, cfg.query_size, cfg.key_size, cfg.attn_size, cfg.output_size) == ("additive", 4, 6, 3, 5)
    specs = cfg.param_specs()
    assert [(n, s) for n, s, _ in specs] == [("weight_key", (3, 6)), ("weight_query", (3, 4)), ("v", (3,)), ("weight_c", (5, 10))]
    assert [o for *_, o in specs] == [0, 18, 30, 33]
    assert cfg.param_count == 83
    assert rk.AttentionConfig("dot", 4, 4).param_count == 0
    assert rk.AttentionConfig("bahdanau", 4, 6, attn_size=3) == rk.AttentionConfig("additive", 4, 6, attn_size=3)
    assert "additive" in repr(cfg)


@pytest.mark.parametrize("score", SCORES)
def test_cpu_float32_agrees_with_reference_float64(score):
    cfg = config(score)
    params, keys, queries, gh, gc, gw = data(cfg)
    ref = rk.Attention(cfg, params, backend="reference")
    cpu = rk.Attention(cfg, params.astype(np.float32), backend="cpu")
    f = lambda a: None if a is None else a.astype(np.float32)  # noqa: E731
    want = ref.forward(ref.memory(keys, LENGTHS), queries)
    got = cpu.forward(cpu.memory(f(keys), LENGTHS), f(queries))
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    want = ref.backward(ref.memory(keys, LENGTHS), queries, d_hidden=gh, d_context=gc, d_weights=gw)
    got = cpu.backward(cpu.memory(f(keys), LENGTHS), f(queries), d_hidden=f(gh), d_context=f(gc), d_weights=f(gw))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("score", SCORES)
def test_backward_agrees_with_finite_differences(score):
    cfg = config(score)
    params, keys, queries, gh, gc, gw = data(cfg, seed=1)
    att = rk.Attention(cfg, params, backend="reference")
    dq, dk, dp = att.backward(att.memory(keys, LENGTHS), queries, d_hidden=gh, d_context=gc, d_weights=gw)
    assert dq.shape == queries.shape and dk.shape == keys.shape and dp.shape == params.shape
    eps = 1e-6

    def fd(make):
        return (loss(*make(eps), gh, gc, gw) - loss(*make(-eps), gh, gc, gw)) / (2 * eps)

    def bump(a, idx, e):
        b = a.copy()
        b[idx] += e
        return b

    for idx in [(0, 0, 0), (1, 2, 3), (1, 1, 1)]:
        num = fd(lambda e: (att, keys, bump(queries, idx, e)))
        np.testing.assert_allclose(dq[idx], num, rtol=1e-6, atol=1e-8)
    for idx in [(0, 0, 0), (1, 1, 2), (2, 2, 3), (4, 0, 1)]:
        num = fd(lambda e: (att, bump(keys, idx, e), queries))
        np.testing.assert_allclose(dk[idx], num, rtol=1e-6, atol=1e-8)
    for name, shape, off in cfg.param_specs():
        for i in {off, off + int(np.prod(shape)) - 1}:
            num = fd(lambda e: (rk.Attention(cfg, bump(params, i, e), backend="reference"), keys, queries))
            np.testing.assert_allclose(dp[i], num, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("backend,dtype", [("reference", np.float64), ("cpu", np.float32)])
@pytest.mark.parametrize("score", SCORES)
def test_masked_softmax(score, backend, dtype):
    cfg = config(score)
    params, keys, queries, gh, gc, gw = data(cfg, seed=2, dtype=dtype)
    att = rk.Attention(cfg, params, backend=backend)
    mem = att.memory(keys, np.array(LENGTHS))
    assert (mem.steps, mem.batch_size, mem.lengths) == (S, B, LENGTHS)
    h, c, w = att.forward(mem, queries)
    assert h.shape == (TQ, B, O) and c.shape == (TQ, B, HK) and w.shape == (TQ, B, S)
    for b, n in enumerate(LENGTHS):
        assert np.all(w[:, b, n:] == 0)
        assert np.all(w[:, b, :n] > 0)
    np.testing.assert_allclose(w.sum(axis=2), 1, rtol=1e-6)
    # The keys past a length are never read, and get no gradient.
    padded = keys.copy()
    for b, n in enumerate(LENGTHS):
        padded[n:, b] = 1e3
    for g, want in zip(att.forward(att.memory(padded, LENGTHS), queries), (h, c, w)):
        np.testing.assert_array_equal(g, want)
    _, dk, _ = att.backward(mem, queries, d_hidden=gh, d_context=gc, d_weights=gw)
    for b, n in enumerate(LENGTHS):
        assert np.all(dk[n:, b] == 0)
    # Without lengths every key counts.
    _, _, w_all = att.forward(att.memory(keys), queries)
    assert np.all(w_all > 0)


@pytest.mark.parametrize("backend,dtype", [("reference", np.float64), ("cpu", np.float32)])
def test_gather_is_the_memory_of_the_gathered_keys(backend, dtype):
    cfg = config("additive")
    params, keys, queries, *_ = data(cfg, seed=4, dtype=dtype)
    att = rk.Attention(cfg, params, backend=backend)
    rows = [2, 0, 2, 1]
    g = att.memory(keys, LENGTHS).gather(np.array(rows))
    assert g.batch_size == 4 and g.lengths == [LENGTHS[r] for r in rows]
    direct = att.memory(np.ascontiguousarray(keys[:, rows]), [LENGTHS[r] for r in rows])
    q = np.ascontiguousarray(queries[:, [0, 1, 2, 0]])
    for a, b in zip(att.forward(g, q), att.forward(direct, q)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"`rows\[0\]`"):
        att.memory(keys, LENGTHS).gather([3])


def test_without_hidden_state():
    cfg = config("general", output_size=None)
    assert cfg.output_size == 0 and [n for n, *_ in cfg.param_specs()] == ["weight_a"]
    params, keys, queries, _, gc, _ = data(cfg)
    att = rk.Attention(cfg, params, backend="reference")
    h, c, w = att.forward(att.memory(keys, LENGTHS), queries)
    assert h is None
    with pytest.raises(ValueError, match="`d_hidden`"):
        att.backward(att.memory(keys, LENGTHS), queries, d_hidden=np.zeros((TQ, B, 1)))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="`score`"):
        rk.AttentionConfig("cosine", 4, 4)
    with pytest.raises(ValueError):
        rk.AttentionConfig("dot", 4, 5)  # dot needs Hq = Hk
    cfg = config("general")
    params, keys, queries, *_ = data(cfg)
    with pytest.raises(ValueError, match="`params`"):
        rk.Attention(cfg, params[:-1], backend="reference")
    with pytest.raises(TypeError, match="`params`"):
        rk.Attention(cfg, params)  # float64 on the cpu backend
    with pytest.raises(ValueError, match="`backend`"):
        rk.Attention(cfg, params, backend="gpu")
    att = rk.Attention(cfg, params, backend="reference")
    with pytest.raises(ValueError, match="`keys`"):
        att.memory(keys[:, :, :3])
    with pytest.raises(TypeError, match="`keys`"):
        att.memory(keys.astype(np.float32))
    with pytest.raises(ValueError, match="`lengths`"):
        att.memory(keys, [1, 2])
    with pytest.raises(ValueError, match=r"`lengths\[1\]`"):
        att.memory(keys, [1, 6, 2])
    mem = att.memory(keys, LENGTHS)
    with pytest.raises(ValueError, match="`queries`"):
        att.forward(mem, queries[:, :2])
    with pytest.raises(ValueError, match="`queries`"):
        att.forward(mem, queries[..., :3].copy())
    with pytest.raises(ValueError, match="`d_context`"):
        att.backward(mem, queries, d_context=np.zeros((TQ, B, 2)))
    with pytest.raises(ValueError, match="`d_weights`"):
        att.backward(mem, queries, d_weights=np.zeros((TQ, B, S + 1)))
    other = rk.Attention(cfg, params, backend="reference")
    with pytest.raises(ValueError, match="`memory`"):
        other.forward(mem, queries)


@pytest.mark.parametrize("backend,dtype", [("reference", np.float64), ("reference", np.float32), ("cpu", np.float32)])
@pytest.mark.parametrize("output_size", [O, None])
@pytest.mark.parametrize("score", SCORES)
def test_saved_forward_gives_the_recomputed_gradients(score, output_size, backend, dtype):
    cfg = config(score, output_size=output_size)
    params, keys, queries, gh, gc, gw = data(cfg, seed=5, dtype=dtype)
    att = rk.Attention(cfg, params, backend=backend, threads=2)
    mem = att.memory(keys, LENGTHS)
    plain = att.forward(mem, queries)
    *outs, saved = att.forward_training(mem, queries)
    assert isinstance(saved, rk.AttentionSaved) and len(outs) == 3
    assert saved.dtype == np.dtype(dtype).name and saved.queries_shape == queries.shape
    assert saved.nbytes == np.dtype(dtype).itemsize * (TQ * B * (S + HK + cfg.output_size) + queries.size)
    assert "AttentionSaved" in repr(saved)
    for got, want in zip(outs, plain):
        if want is None:
            assert got is None
        else:
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    # The returned arrays are the caller's: changing them leaves the saved state alone.
    for a in outs:
        if a is not None:
            a[...] = 7
    ups = [dict(d_hidden=gh, d_context=gc, d_weights=gw), dict(d_context=gc), dict(d_weights=gw)]
    if gh is not None:
        ups.append(dict(d_hidden=gh))
    for up in ups:  # one saved state, several backward calls
        want = att.backward(mem, queries, **up)
        got = att.backward(mem, queries, **up, saved=saved)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)


def test_saved_errors_name_the_argument():
    cfg = config("general")
    params, keys, queries, gh, gc, gw = data(cfg, seed=6)
    att = rk.Attention(cfg, params, backend="reference")
    mem = att.memory(keys, LENGTHS)
    *_, saved = att.forward_training(mem, queries)
    att.backward(mem, queries, d_context=gc, saved=saved)  # the right ones
    # Another Attention, even of the same parameters, with its own memory of the same keys.
    other = rk.Attention(cfg, params, backend="reference")
    with pytest.raises(ValueError, match="`saved`.*another Attention"):
        other.backward(other.memory(keys, LENGTHS), queries, d_context=gc, saved=saved)
    # Another dtype.
    att32 = rk.Attention(cfg, params.astype(np.float32), backend="reference")
    mem32 = att32.memory(keys.astype(np.float32), LENGTHS)
    with pytest.raises(TypeError, match="`saved`.*float32.*float64"):
        att32.backward(mem32, queries.astype(np.float32), saved=saved)
    # Another memory: of the same keys made again, of other keys, or gathered.
    for m in (att.memory(keys, LENGTHS), att.memory(keys), mem.gather([0, 1, 2])):
        with pytest.raises(ValueError, match="`memory`"):
            att.backward(m, queries, d_context=gc, saved=saved)
    # Queries of another shape (Tq), or of the same shape with other values.
    with pytest.raises(ValueError, match=r"`queries`.*shape \(2, 3, 4\)"):
        att.backward(mem, queries[:1].copy(), d_context=gc[:1].copy(), saved=saved)
    changed = queries.copy()
    changed[1, 2, 3] += 1e-12
    with pytest.raises(ValueError, match="`queries`.*other values"):
        att.backward(mem, changed, d_context=gc, saved=saved)
    with pytest.raises(TypeError, match="saved"):
        att.backward(mem, queries, d_context=gc, saved=(1, 2))
    # The checks leave it usable.
    att.backward(mem, queries, d_context=gc, saved=saved)


@pytest.mark.skipif(TORCH_MISSING is not None, reason=TORCH_MISSING or "")
def test_luong_general_matches_torch():
    import torch

    cfg = config("general")
    params, keys, queries, *_ = data(cfg, seed=3)
    att = rk.Attention(cfg, params, backend="reference")
    h, c, w = att.forward(att.memory(keys, LENGTHS), queries)
    spec = {n: (s, o) for n, s, o in cfg.param_specs()}
    p = torch.from_numpy(params)

    def tensor(name):
        s, o = spec[name]
        return p[o : o + int(np.prod(s))].reshape(s)

    K = torch.from_numpy(keys).transpose(0, 1)  # [B, S, Hk]
    Q = torch.from_numpy(queries).transpose(0, 1)  # [B, Tq, Hq]
    scores = Q @ tensor("weight_a") @ K.transpose(1, 2)  # [B, Tq, S]: q^T W_a k
    mask = torch.arange(S)[None, :] >= torch.tensor(LENGTHS)[:, None]
    weights = torch.softmax(scores.masked_fill(mask[:, None, :], float("-inf")), dim=-1)
    context = weights @ K  # [B, Tq, Hk]
    hidden = torch.tanh(torch.cat([context, Q], dim=-1) @ tensor("weight_c").T)
    np.testing.assert_allclose(w, weights.transpose(0, 1).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c, context.transpose(0, 1).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h, hidden.transpose(0, 1).numpy(), rtol=1e-12, atol=1e-12)
