"""The cell options of rnn_kernels.Config (direction, merge, peephole, gate_clip, input_forget,
linear_before_reset, layer_norm, zoneout, zoneout_cell, recurrent_dropout, input_dropout).

For each option and a few combinations: the float32 CPU backend (and the float32 reference)
agree with the float64 reference on the outputs and every gradient within rtol 1e-4 (atol 1e-5);
the float64 reference's backward agrees with central differences (eps 1e-6) at one coordinate of
every parameter tensor (the options' own tensors included) and a few of x, h0 and c0, within
rtol 1e-6 (atol 1e-8); the masks of a training pass follow the seed; invalid values are a
ValueError naming the argument; a safetensors file keeps the options; the masks of a seed read
back (`read_masks`) and supplied (`masks=`) give that seed's bits, and supplied masks with no or
every zoneout hit give the plain cell's pass and a state that never moves. An oracle outside the
library: onnxruntime's outputs in tests/fixtures/onnx (docs/case-format.md), which the float64
reference matches within 1e-5 (the cases were computed in float32) and the float32 CPU backend
within 1e-4, the error being max |a - b| / max(1, |b|) as in the `verify` example.
"""

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

import rnn_kernels as rk

ONNX_CASES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "onnx"


def rng(seed):
    return np.random.default_rng(seed)


def params_for(config, seed, dtype=np.float64, scale=None):
    k = scale if scale is not None else 1.0 / np.sqrt(config.hidden_size)
    return rng(seed).uniform(-k, k, config.param_count).astype(dtype)


def inputs(config, steps, batch, seed, dtype=np.float64):
    r = rng(seed)
    shape = (batch, steps, config.input_size) if config.batch_first else (steps, batch, config.input_size)
    x = r.standard_normal(shape).astype(dtype)
    lds = config.num_layers * config.num_directions
    h0 = r.standard_normal((lds, batch, config.state_size)).astype(dtype) * 0.5
    c0 = r.standard_normal((lds, batch, config.hidden_size)).astype(dtype) * 0.5 if config.mode == "lstm" else None
    return x, h0, c0


def f32(a):
    return None if a is None else a.astype(np.float32)


# Every option, alone and in the combinations of the issue; small sizes, 2 layers where the
# option concerns the layers' connection.
OPTION_CONFIGS = [
    rk.Config("lstm", 3, 4, peephole=True),
    rk.Config("lstm", 3, 4, gate_clip=0.4),
    rk.Config("lstm", 3, 4, input_forget=True),
    rk.Config("lstm", 3, 4, num_layers=2, bidirectional=True, peephole=True, gate_clip=0.6, input_forget=True),
    rk.Config("gru", 3, 4, linear_before_reset=False),
    rk.Config("gru", 3, 4, num_layers=2, linear_before_reset=False, gate_clip=0.5, direction="bidirectional"),
    rk.Config("rnn_tanh", 3, 4, gate_clip=0.3),
    rk.Config("lstm", 3, 4, layer_norm=True),
    rk.Config("lstm", 3, 5, num_layers=2, layer_norm=True, peephole=True, proj_size=2),
    rk.Config("gru", 3, 4, num_layers=2, bidirectional=True, layer_norm=True),
    rk.Config("lstm", 3, 4, num_layers=2, direction="reverse"),
    rk.Config("gru", 3, 4, direction="reverse", linear_before_reset=False),
    rk.Config("lstm", 3, 4, num_layers=2, bidirectional=True, merge="sum"),
    rk.Config("rnn_relu", 3, 4, num_layers=2, bidirectional=True, merge="sum", batch_first=True),
    rk.Config("lstm", 3, 4, zoneout=0.3, zoneout_cell=0.2),
    rk.Config("gru", 3, 4, num_layers=2, zoneout=0.4),
    rk.Config("lstm", 3, 4, num_layers=2, recurrent_dropout=0.3),
    rk.Config("gru", 3, 4, num_layers=2, bidirectional=True, input_dropout=0.3),
    rk.Config("lstm", 3, 4, num_layers=2, dropout=0.2, zoneout=0.3, recurrent_dropout=0.25, input_dropout=0.2),
]

MASKED = [c for c in OPTION_CONFIGS if {"zoneout", "zoneout_cell", "recurrent_dropout", "input_dropout"} & set(c.options)]

SEED = 2024


def ids(c):
    return repr(c)


def run_all(model, x, h0, c0, lengths, seed=SEED, dy_seed=7):
    """Inference, a training forward with `seed` and backward with random upstream gradients."""
    y, hn, cn = model.forward(x, lengths=lengths, h0=h0, c0=c0)
    y2, hn2, cn2, reserve = model.forward_training(x, lengths=lengths, h0=h0, c0=c0, seed=seed)
    r = rng(dy_seed)
    dy = r.standard_normal(y.shape).astype(y.dtype)
    dhn = r.standard_normal(hn.shape).astype(y.dtype)
    dcn = r.standard_normal(cn.shape).astype(y.dtype) if cn is not None else None
    grads = model.backward(reserve, dy=dy, dhn=dhn, dcn=dcn)
    return (y, hn, cn), (y2, hn2, cn2), grads


# -- configuration ---------------------------------------------------------------------------


def test_defaults_and_properties():
    c = rk.Config("lstm", 3, 4)
    assert (c.direction, c.merge, c.peephole, c.gate_clip, c.input_forget) == ("forward", "concat", False, None, False)
    assert (c.linear_before_reset, c.layer_norm) == (True, False)
    assert (c.zoneout, c.zoneout_cell, c.recurrent_dropout, c.input_dropout) == (0.0, 0.0, 0.0, 0.0)
    assert c.options == []
    c = rk.Config(
        "lstm", 3, 4, num_layers=2, bidirectional=True, merge="sum", peephole=True, gate_clip=2.0, input_forget=True,
        layer_norm=True, zoneout=0.1, zoneout_cell=0.2, recurrent_dropout=0.3, input_dropout=0.4,
    )
    assert (c.direction, c.merge, c.peephole, c.gate_clip, c.input_forget, c.layer_norm) == ("bidirectional", "sum", True, 2.0, True, True)
    assert (c.zoneout, c.zoneout_cell, c.recurrent_dropout, c.input_dropout) == (0.1, 0.2, 0.3, 0.4)
    assert c.bidirectional and c.num_directions == 2 and c.output_size == 4  # merge="sum": Hout features
    assert set(c.options) == {
        "merge=sum", "peephole", "gate_clip", "input_forget", "layer_norm", "zoneout", "zoneout_cell",
        "recurrent_dropout", "input_dropout",
    }
    g = rk.Config("gru", 3, 4, linear_before_reset=False, direction="reverse")
    assert not g.linear_before_reset and g.direction == "reverse" and not g.bidirectional and g.num_directions == 1
    assert set(g.options) == {"linear_before_reset=false", "direction=reverse"}


def test_direction_and_bidirectional_agree():
    assert rk.Config("gru", 3, 4, direction="bidirectional") == rk.Config("gru", 3, 4, bidirectional=True)
    assert rk.Config("gru", 3, 4, direction="bidirectional", bidirectional=True) == rk.Config("gru", 3, 4, bidirectional=True)
    assert rk.Config("gru", 3, 4, direction="forward", bidirectional=False) == rk.Config("gru", 3, 4)
    assert rk.Config("gru", 3, 4, direction="reverse", bidirectional=False).direction == "reverse"
    assert rk.Config("gru", 3, 4, direction="Reverse").direction == "reverse"
    assert rk.Config("gru", 3, 4, bidirectional=False).direction == "forward"


@pytest.mark.parametrize("config", OPTION_CONFIGS, ids=ids)
def test_repr_equality_pickle_and_metadata_keep_the_options(config):
    again = eval(repr(config), {"Config": rk.Config})
    assert again == config and hash(again) == hash(config)
    assert pickle.loads(pickle.dumps(config)) == config
    assert rk.Config.from_metadata(config.metadata()) == config
    # Each option changes the configuration: a plain one of the same sizes differs.
    plain = rk.Config(config.mode, config.input_size, config.hidden_size, num_layers=config.num_layers)
    assert config != plain


def test_repr_names_each_option():
    c = rk.Config("lstm", 3, 4, direction="reverse", peephole=True, gate_clip=2.0, layer_norm=True, zoneout=0.5)
    assert repr(c) == "Config(mode='lstm', input_size=3, hidden_size=4, direction='reverse', peephole=True, layer_norm=True, gate_clip=2.0, zoneout=0.5)"
    c = rk.Config("gru", 3, 4, bidirectional=True, merge="sum", linear_before_reset=False, input_dropout=0.25, recurrent_dropout=0.0)
    assert repr(c) == "Config(mode='gru', input_size=3, hidden_size=4, bidirectional=True, merge='sum', linear_before_reset=False, input_dropout=0.25)"


def specs_of(config):
    return {name: shape for name, shape, _ in config.param_specs()}


def test_param_specs_list_the_options_tensors():
    plain = specs_of(rk.Config("lstm", 3, 5, num_layers=2, bidirectional=True))
    peep = specs_of(rk.Config("lstm", 3, 5, num_layers=2, bidirectional=True, peephole=True))
    assert set(peep) - set(plain) == {f"weight_peephole_l{k}{s}" for k in (0, 1) for s in ("", "_reverse")}
    assert peep["weight_peephole_l1_reverse"] == (3, 5)
    ln = specs_of(rk.Config("lstm", 3, 5, layer_norm=True))
    assert set(ln) - set(specs_of(rk.Config("lstm", 3, 5))) == {"weight_ln_ih_l0", "weight_ln_hh_l0", "weight_ln_c_l0", "bias_ln_c_l0"}
    assert (ln["weight_ln_ih_l0"], ln["weight_ln_hh_l0"], ln["weight_ln_c_l0"], ln["bias_ln_c_l0"]) == ((20,), (20,), (5,), (5,))
    gln = specs_of(rk.Config("gru", 3, 5, layer_norm=True, direction="reverse"))
    assert set(gln) - set(specs_of(rk.Config("gru", 3, 5))) == {"weight_ln_ih_l0", "weight_ln_hh_l0"}
    assert gln["weight_ln_hh_l0"] == (15,)
    # A reverse-only stack keeps the unsuffixed names; merge="sum" makes the next layer's input Hout wide.
    assert not any(n.endswith("_reverse") for n in gln)
    assert specs_of(rk.Config("gru", 3, 5, num_layers=2, bidirectional=True, merge="sum"))["weight_ih_l1"] == (15, 5)
    # Options without tensors keep the layout.
    for kwargs in (dict(gate_clip=1.0), dict(input_forget=True), dict(zoneout=0.5, recurrent_dropout=0.5, input_dropout=0.5)):
        assert rk.Config("lstm", 3, 5, **kwargs).param_specs() == rk.Config("lstm", 3, 5).param_specs()
    for config in OPTION_CONFIGS:
        end = 0
        for _, shape, offset in config.param_specs():
            assert offset == end
            end += int(np.prod(shape))
        assert end == config.param_count


@pytest.mark.parametrize(
    "kwargs, args",
    [
        (dict(gate_clip=0.0), ["gate_clip"]),
        (dict(gate_clip=-1.0), ["gate_clip"]),
        (dict(gate_clip=float("inf")), ["gate_clip"]),
        (dict(gate_clip=float("nan")), ["gate_clip"]),
        (dict(dropout=1.0), ["dropout"]),
        (dict(zoneout=1.0), ["zoneout"]),
        (dict(zoneout=-0.1), ["zoneout"]),
        (dict(zoneout_cell=1.5), ["zoneout_cell"]),
        (dict(recurrent_dropout=1.0), ["recurrent_dropout"]),
        (dict(input_dropout=-0.5), ["input_dropout"]),
        (dict(input_dropout=float("nan")), ["input_dropout"]),
        (dict(merge="sum"), ["merge"]),
        (dict(merge="sum", direction="reverse"), ["merge"]),
        (dict(merge="mean", bidirectional=True), ["merge"]),
        (dict(direction="sideways"), ["direction"]),
        (dict(direction="reverse", bidirectional=True), ["direction", "bidirectional"]),
        (dict(direction="forward", bidirectional=True), ["direction", "bidirectional"]),
        (dict(direction="bidirectional", bidirectional=False), ["direction", "bidirectional"]),
        (dict(mode="gru", peephole=True), ["peephole"]),
        (dict(mode="rnn_tanh", input_forget=True), ["input_forget"]),
        (dict(linear_before_reset=False), ["linear_before_reset"]),
        (dict(mode="rnn_relu", layer_norm=True), ["layer_norm"]),
        (dict(mode="gru", layer_norm=True, linear_before_reset=False), ["layer_norm"]),
        (dict(mode="gru", zoneout_cell=0.5), ["zoneout_cell"]),
        (dict(mode="gru", recurrent_dropout=0.5, linear_before_reset=False), ["recurrent_dropout"]),
    ],
)
def test_invalid_options_are_value_errors_naming_them(kwargs, args):
    full = dict(mode="lstm", input_size=3, hidden_size=4)
    full.update(kwargs)
    with pytest.raises(ValueError) as e:
        rk.Config(**full)
    for arg in args:
        assert arg in str(e.value)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        rk.Config("lstm", 3, 4, 1, True, False, False, 0, 0.0, "forward")
    with pytest.raises(TypeError, match="peephole"):
        rk.Config("lstm", 3, 4, peephole="yes")


# -- the backends agree, and backward is the derivative --------------------------------------


@pytest.mark.parametrize("config", OPTION_CONFIGS, ids=ids)
def test_cpu_float32_agrees_with_reference_float64(config):
    p = params_for(config, 1)
    x, h0, c0 = inputs(config, 6, 3, 2)
    lengths = [6, 2, 4]
    want = run_all(rk.Model(config, p, backend="reference"), x, h0, c0, lengths)
    for backend in ("cpu", "reference"):
        got = run_all(rk.Model(config, f32(p), backend=backend), f32(x), f32(h0), f32(c0), lengths)
        for w_part, g_part in zip(want, got):
            for w, g in zip(w_part, g_part):
                assert (w is None) == (g is None)
                if w is not None:
                    assert g.dtype == np.float32 and g.shape == w.shape
                    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    if config not in MASKED and config.dropout == 0.0:
        # No masks: the training forward is the inference forward.
        for a, b in zip(want[0], want[1]):
            if a is not None:
                np.testing.assert_array_equal(a, b)


def loss_of(outputs, weights):
    return sum(float(np.sum(o * w)) for o, w in zip(outputs, weights) if o is not None)


@pytest.mark.parametrize("config", OPTION_CONFIGS, ids=ids)
def test_backward_matches_finite_differences_in_float64(config):
    """Central differences of a weighted sum of y, hn and cn (a training pass with a fixed seed, so
    fixed masks) against backward on the float64 reference: one coordinate of every parameter
    tensor and three of each of x, h0 and c0."""
    p = params_for(config, 31, scale=0.6)
    x, h0, c0 = inputs(config, 4, 3, 32)
    lengths = [4, 1, 3]
    model = rk.Model(config, p, backend="reference")
    y, hn, cn, reserve = model.forward_training(x, lengths=lengths, h0=h0, c0=c0, seed=SEED)
    r = rng(33)
    weights = [r.standard_normal(a.shape) if a is not None else None for a in (y, hn, cn)]
    dx, dh0, dc0, dparams = model.backward(reserve, dy=weights[0], dhn=weights[1], dcn=weights[2])

    def loss(params=p, x=x, h0=h0, c0=c0):
        m = rk.Model(config, params, backend="reference")
        return loss_of(m.forward_training(x, lengths=lengths, h0=h0, c0=c0, seed=SEED)[:3], weights)

    eps = 1e-6

    def numeric(f, a, i):
        plus, minus = a.copy(), a.copy()
        plus.flat[i] += eps
        minus.flat[i] -= eps
        return (f(plus) - f(minus)) / (2 * eps)

    pick = rng(34)
    checks = []
    for name, shape, offset in config.param_specs():
        i = offset + int(pick.integers(int(np.prod(shape))))
        checks.append((name, dparams[i], numeric(lambda q: loss(params=q), p, i)))
    for name, a, g in (("x", x, dx), ("h0", h0, dh0), ("c0", c0, dc0)):
        if a is None:
            assert g is None
            continue
        for i in pick.choice(a.size, 3, replace=False):
            checks.append((f"{name}[{i}]", g.flat[i], numeric(lambda v, n=name: loss(**{n: v}), a, i)))
    for name, analytic, fd in checks:
        assert abs(analytic - fd) <= 1e-8 + 1e-6 * abs(fd), f"{name}: backward {analytic}, finite differences {fd}"


# -- masks -----------------------------------------------------------------------------------


def without_masks(config):
    """The configuration without zoneout, recurrent and input dropout (the same parameters)."""
    meta = config.metadata()
    for key in ("zoneout", "zoneout_cell", "recurrent_dropout", "input_dropout", "dropout"):
        meta.pop(key, None)
    return rk.Config.from_metadata(meta)


@pytest.mark.parametrize("config", MASKED, ids=ids)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_masks_follow_the_seed(config, backend):
    p = params_for(config, 41, np.float32)
    x, h0, c0 = inputs(config, 8, 5, 42, np.float32)
    model = rk.Model(config, p, backend=backend)
    a = run_all(model, x, h0, c0, None, seed=7)
    b = run_all(model, x, h0, c0, None, seed=7)
    c = run_all(model, x, h0, c0, None, seed=8)
    # The same seed: the same bits, forward and backward.
    for part_a, part_b in zip(a, b):
        for u, v in zip(part_a, part_b):
            if u is not None:
                np.testing.assert_array_equal(u, v)
    # Another seed: other masks.
    assert not np.array_equal(a[1][0], c[1][0])
    assert not np.array_equal(a[2][3], c[2][3])
    # A training pass is not the inference pass.
    assert not np.array_equal(a[1][0], a[0][0])
    # Inference is deterministic; it ignores recurrent and input dropout (and dropout between
    # layers), while zoneout's inference is z·prev + (1-z)·new, unlike the plain cell's.
    np.testing.assert_array_equal(model.forward(x, h0=h0, c0=c0)[0], a[0][0])
    plain = rk.Model(without_masks(config), p, backend=backend).forward(x, h0=h0, c0=c0)
    if config.zoneout == 0.0 and config.zoneout_cell == 0.0:
        for u, v in zip(plain, a[0]):
            if u is not None:
                np.testing.assert_array_equal(u, v)
    else:
        assert not np.allclose(plain[0], a[0][0])


def test_each_masked_option_draws_from_the_seed():
    """Each of zoneout, zoneout_cell, recurrent_dropout and input_dropout alone changes the training
    pass with the seed; the mask stream covers them all."""
    for kwargs in (dict(zoneout=0.5), dict(zoneout_cell=0.5), dict(recurrent_dropout=0.5), dict(input_dropout=0.5)):
        config = rk.Config("lstm", 3, 4, num_layers=2, **kwargs)
        model = rk.Model(config, params_for(config, 51, np.float32))
        x, h0, c0 = inputs(config, 6, 4, 52, np.float32)
        ys = [model.forward_training(x, h0=h0, c0=c0, seed=s)[0] for s in (1, 1, 2)]
        np.testing.assert_array_equal(ys[0], ys[1])
        assert not np.array_equal(ys[0], ys[2]), kwargs
        # Without a seed, a fresh one per call.
        assert not np.array_equal(model.forward_training(x, h0=h0, c0=c0)[0], model.forward_training(x, h0=h0, c0=c0)[0])


ALL_MASKS = rk.Config(
    "lstm", 3, 4, num_layers=2, bidirectional=True, dropout=0.3, zoneout=0.3, zoneout_cell=0.2, recurrent_dropout=0.25, input_dropout=0.2
)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_masks_read_back_and_supplied_give_the_seeds_bits(backend):
    config = ALL_MASKS
    model = rk.Model(config, params_for(config, 61, np.float32), backend=backend)
    x, h0, c0 = inputs(config, 6, 4, 62, np.float32)
    sites = model.mask_sites(6, 4)
    masks = model.read_masks(6, 4, seed=9)
    # Every option's masks at every layer and direction (dropout between the layers only).
    assert sorted(masks) == sorted((layer, d, kind) for layer, d, kind, _ in sites)
    kinds = {kind for _, _, kind, _ in sites}
    assert kinds == {"dropout", "recurrent_dropout", "input_dropout", "zoneout", "zoneout_cell"}
    for layer, d, kind, shape in sites:
        hits = masks[(layer, d, kind)]
        assert hits.dtype == np.bool_ and hits.shape == shape
        assert shape[0] == (1 if kind in ("recurrent_dropout", "input_dropout") else 6) and shape[1] == 4
        assert 0 < hits.sum() < hits.size, (layer, d, kind)
    a = model.forward_training(x, h0=h0, c0=c0, seed=9)
    b = model.forward_training(x, h0=h0, c0=c0, masks=masks)
    c = model.forward_training(x, h0=h0, c0=c0, seed=10)
    for u, v in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    r = rng(63)
    dy = r.standard_normal(a[0].shape).astype(np.float32)
    ga, gb = model.backward(a[3], dy=dy), model.backward(b[3], dy=dy)
    for u, v in zip(ga, gb):
        np.testing.assert_array_equal(u, v)
    # Other masks (one site's hits and misses swapped) change the pass.
    flipped = dict(masks)
    flipped[(0, 0, "zoneout")] = ~masks[(0, 0, "zoneout")]
    assert not np.array_equal(model.forward_training(x, h0=h0, c0=c0, masks=flipped)[0], a[0])


def test_supplied_zoneout_masks_with_no_or_every_hit():
    """Zoneout masks with no hit give the plain cell's training pass; with every hit the state never
    leaves h0, c0."""
    config = rk.Config("lstm", 3, 4, num_layers=2, zoneout=0.3, zoneout_cell=0.2)
    p = params_for(config, 71, np.float64)
    x, h0, c0 = inputs(config, 5, 3, 72)
    model = rk.Model(config, p, backend="reference")
    none = {(l, d, kind): np.zeros(s, dtype=bool) for l, d, kind, s in model.mask_sites(5, 3)}
    plain = rk.Model(without_masks(config), p, backend="reference").forward_training(x, h0=h0, c0=c0)
    got = model.forward_training(x, h0=h0, c0=c0, masks=none)
    for u, v in zip(plain[:3], got[:3]):
        np.testing.assert_array_equal(u, v)
    every = {k: np.ones_like(v) for k, v in none.items()}
    y, hn, cn, _ = model.forward_training(x, h0=h0, c0=c0, masks=every)
    np.testing.assert_array_equal(hn, h0)
    np.testing.assert_array_equal(cn, c0)
    np.testing.assert_array_equal(y, np.broadcast_to(h0[-1], y.shape))


def test_bad_masks_are_errors_naming_them():
    model = rk.Model(ALL_MASKS, params_for(ALL_MASKS, 81, np.float32))
    x, h0, c0 = inputs(ALL_MASKS, 6, 4, 82, np.float32)
    masks = model.read_masks(6, 4, seed=1)
    short = model.read_masks(5, 4, seed=1)
    bad = [
        (TypeError, [m for m in masks.values()]),
        (TypeError, {(0, 0, "zoneout"): masks[(0, 0, "zoneout")].astype(np.float32)}),
        (TypeError, {"zoneout": masks[(0, 0, "zoneout")]}),
        (ValueError, {(0, 0, "dropout_h"): masks[(0, 0, "zoneout")]}),
        (ValueError, {(0, 2, "zoneout"): masks[(0, 0, "zoneout")]}),
        # A per-sequence kind with more than one step.
        (ValueError, {**masks, (0, 0, "recurrent_dropout"): masks[(0, 0, "zoneout")]}),
        (ValueError, {k: v[..., ::2] if k[2] == "zoneout" else v for k, v in masks.items()}),
        (ValueError, short),
        (ValueError, {k: v for k, v in masks.items() if k != (1, 1, "zoneout_cell")}),
    ]
    for error, m in bad:
        with pytest.raises(error, match="masks"):
            model.forward_training(x, h0=h0, c0=c0, masks=m)
    with pytest.raises(ValueError, match="masks"):
        model.forward_training(x, h0=h0, c0=c0, masks=masks, seed=3)
    for steps, batch, name in ((0, 4, "steps"), (6, 0, "batch")):
        with pytest.raises(ValueError, match=name):
            model.mask_sites(steps, batch)
        with pytest.raises(ValueError, match=name):
            model.read_masks(steps, batch, seed=1)


# -- files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("config", OPTION_CONFIGS, ids=ids)
def test_safetensors_round_trip_keeps_the_options(config, tmp_path):
    p = params_for(config, 61, np.float32)
    path = tmp_path / "model.safetensors"
    rk.save_safetensors(path, config, p)
    c2, p2 = rk.load_safetensors(path)
    assert c2 == config and c2.options == config.options
    np.testing.assert_array_equal(p2, p)
    x, h0, c0 = inputs(config, 4, 2, 62, np.float32)
    np.testing.assert_array_equal(rk.Model(c2, p2).forward(x, h0=h0, c0=c0)[0], rk.Model(config, p).forward(x, h0=h0, c0=c0)[0])
    # The file's tensors are the options' ones, by name.
    assert set(read_safetensors(path)[1]) == {name for name, _, _ in config.param_specs()}


# -- an outside oracle: onnxruntime's cases --------------------------------------------------


def read_safetensors(path):
    """(metadata, tensors) of a safetensors file: an 8-byte little-endian header length, a JSON
    header (name: dtype, shape, data_offsets; `__metadata__`: strings), then the data."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[8 + n + start : 8 + n + end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return meta, tensors


def case_error(a, b):
    """The `verify` example's error: max |a - b| / max(1, |b|)."""
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


@pytest.mark.parametrize(
    "name",
    ["lstm_all", "lstm_peephole", "lstm_input_forget", "lstm_clip", "lstm_stack2_bidirectional", "gru_cho_clip", "gru_cho_reverse", "gru_lbr_bidirectional_clip"],
)
def test_onnxruntime_cases(name):
    path = ONNX_CASES / f"{name}.safetensors"
    if not path.exists():
        pytest.skip(f"{path} is not there (the package's tests outside the repository)")
    meta, t = read_safetensors(path)
    config = rk.Config.from_metadata(meta)
    assert (config.batch_first, config.dropout) == (False, 0.0)
    if name == "lstm_all":
        assert config.peephole and config.input_forget and config.gate_clip == 1.25 and config.bidirectional
    if name.startswith("gru_cho"):
        assert not config.linear_before_reset and config.options
    p = np.zeros(config.param_count)
    for pname, shape, offset in config.param_specs():
        p[offset : offset + int(np.prod(shape))] = t[pname].astype(np.float64).reshape(-1)
    x = t["x"].astype(np.float64)
    lengths = t["lengths"] if "lengths" in t else None
    h0 = t["h0"].astype(np.float64) if "h0" in t else None
    c0 = t["c0"].astype(np.float64) if "c0" in t and config.mode == "lstm" else None
    want = {k: t[k].astype(np.float64) for k in ("y", "hn", "cn") if k in t}
    assert "y" in want
    for backend, dtype, tol in (("reference", np.float64, 1e-5), ("cpu", np.float32, 1e-4)):
        model = rk.Model(config, p.astype(dtype), backend=backend)
        cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
        got = dict(zip(("y", "hn", "cn"), model.forward(cast(x), lengths=lengths, h0=cast(h0), c0=cast(c0))))
        for k, w in want.items():
            assert got[k].shape == w.shape, k
            err = case_error(got[k].astype(np.float64), w)
            assert err <= tol, f"{name} {backend}: {k} error {err} > {tol}"
