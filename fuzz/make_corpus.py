#!/usr/bin/env python3
"""Writes the seed corpus of the loader fuzz targets (standard library only; deterministic).

    python3 fuzz/make_corpus.py

- corpus/params_load/: parameter files as `Params::save_safetensors` writes them (PyTorch's
  state_dict names and shapes, the configuration in the metadata), one per cell kind and for
  layers, directions, no bias, a projection, and every float dtype the loader reads.
- corpus/case_load/: the smallest PyTorch case files of tests/fixtures (docs/case-format.md),
  and generated ones with F32/F16/BF16 tensors and I32/I64 lengths.

- corpus/config_build/, corpus/seq_shape/, corpus/capi_args/: the structured targets decode
  their input with `arbitrary`; a few deterministic pseudo-random byte strings of a few hundred
  bytes decode to varied calls (longer operation lists than the fuzzer's first short inputs).
"""

import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def encode(dtype, values):
    if dtype == "F64":
        return b"".join(struct.pack("<d", v) for v in values)
    if dtype == "F32":
        return b"".join(struct.pack("<f", v) for v in values)
    if dtype == "F16":
        return b"".join(struct.pack("<e", v) for v in values)
    if dtype == "BF16":  # the high half of the f32 (truncation is fine for seeds)
        return b"".join(struct.pack("<f", v)[2:] for v in values)
    if dtype == "I64":
        return b"".join(struct.pack("<q", int(v)) for v in values)
    if dtype == "I32":
        return b"".join(struct.pack("<i", int(v)) for v in values)
    raise ValueError(dtype)


def safetensors(tensors, metadata):
    """tensors: list of (name, dtype, shape, values); keys sorted as safetensors does."""
    header = {"__metadata__": metadata}
    data = b""
    for name, dtype, shape, values in sorted(tensors):
        raw = encode(dtype, values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def values(n, seed):
    """Deterministic values in [-0.5, 0.5)."""
    out, s = [], seed * 2654435761 % 2**32 or 1
    for _ in range(n):
        s = (s * 1103515245 + 12345) % 2**31
        out.append(round(s / 2**31 - 0.5, 3))
    return out


def param_tensors(cell, i, h, layers, bidir, bias, proj, dtype, prefix=""):
    g, d = GATES[cell], 2 if bidir else 1
    hout = proj if proj else h
    out, seed = [], 1
    for k in range(layers):
        for r in range(d):
            sfx = "_reverse" if r else ""
            shapes = [("weight_ih", [g * h, i if k == 0 else d * hout]), ("weight_hh", [g * h, hout])]
            if bias:
                shapes += [("bias_ih", [g * h]), ("bias_hh", [g * h])]
            if proj:
                shapes += [("weight_hr", [hout, h])]
            for stem, shape in shapes:
                n = 1
                for s in shape:
                    n *= s
                out.append((f"{prefix}{stem}_l{k}{sfx}", dtype, shape, values(n, seed)))
                seed += 1
    return out


def config_meta(cell, i, h, layers, bidir, bias, proj, width=0):
    """`width`: sizes written with leading zeros (still valid), so that a one-byte mutation
    reaches large values without changing the header's length."""
    return {
        "format": "pt",
        "cell": cell,
        "input_size": str(i).zfill(width),
        "hidden_size": str(h).zfill(width),
        "num_layers": str(layers).zfill(width),
        "bidirectional": "true" if bidir else "false",
        "bias": "true" if bias else "false",
        "proj_size": str(proj).zfill(width),
    }


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main():
    params_dir = os.path.join(HERE, "corpus", "params_load")
    configs = [
        # name, cell, I, H, L, bidirectional, bias, proj, dtype
        ("lstm_f32", "lstm", 3, 4, 1, False, True, 0, "F32"),
        ("gru_f32", "gru", 3, 4, 1, False, True, 0, "F32"),
        ("rnn_tanh_f32", "rnn_tanh", 3, 4, 1, False, True, 0, "F32"),
        ("rnn_relu_f32", "rnn_relu", 3, 4, 1, False, True, 0, "F32"),
        ("lstm_l2_bi_f64", "lstm", 2, 3, 2, True, True, 0, "F64"),
        ("gru_l2_nobias_f16", "gru", 2, 3, 2, False, False, 0, "F16"),
        ("rnn_tanh_bi_bf16", "rnn_tanh", 2, 3, 1, True, True, 0, "BF16"),
        ("lstm_proj_f32", "lstm", 3, 4, 1, False, True, 2, "F32"),
        ("lstm_proj_l2_bi_f16", "lstm", 2, 4, 2, True, True, 3, "F16"),
    ]
    for name, cell, i, h, layers, bidir, bias, proj, dtype in configs:
        tensors = param_tensors(cell, i, h, layers, bidir, bias, proj, dtype)
        write(os.path.join(params_dir, name + ".safetensors"), safetensors(tensors, config_meta(cell, i, h, layers, bidir, bias, proj)))
    # Sizes with leading zeros: "00000004" is 4, and one changed byte makes it 90000004.
    tensors = param_tensors("gru", 2, 3, 1, False, True, 0, "F32")
    write(os.path.join(params_dir, "gru_f32_zero_padded.safetensors"), safetensors(tensors, config_meta("gru", 2, 3, 1, False, True, 0, 8)))

    case_dir = os.path.join(HERE, "corpus", "case_load")
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    for name in [
        "gru_b1_t1",
        "lstm_b1_t1",
        "rnn_relu_t1",
        "rnn_tanh_l1_uni",
        "gru_l1_uni",
        "lstm_b1",
        "lstm_proj_l1_uni",
        "rnn_tanh_nobias_l2_bi",
        "lstm_l2_uni_varlen",
    ]:
        os.makedirs(case_dir, exist_ok=True)
        shutil.copyfile(os.path.join(fixtures, name + ".safetensors"), os.path.join(case_dir, name + ".safetensors"))
    # Generated cases: every optional tensor, other dtypes, I32 and I64 lengths.
    for name, cell, i, h, layers, bidir, proj, dtype, t, b, lengths, ldtype, width in [
        ("gen_lstm_varlen_f32", "lstm", 2, 3, 1, True, 0, "F32", 3, 2, [3, 1], "I32", 0),
        ("gen_gru_varlen_f16", "gru", 2, 2, 2, False, 0, "F16", 2, 3, [2, 1, 2], "I64", 0),
        ("gen_lstm_proj_bf16", "lstm", 1, 3, 1, False, 2, "BF16", 2, 1, None, None, 0),
        ("gen_rnn_tanh_zero_padded", "rnn_tanh", 2, 2, 1, False, 0, "F32", 2, 2, [2, 1], "I64", 8),
    ]:
        d, hout = 2 if bidir else 1, proj or h
        tensors = param_tensors(cell, i, h, layers, bidir, True, proj, dtype)
        shapes = {"x": [t, b, i], "h0": [layers * d, b, hout], "y": [t, b, d * hout], "hn": [layers * d, b, hout]}
        shapes.update({"dy": shapes["y"], "dhn": shapes["hn"], "dx": shapes["x"], "dh0": shapes["h0"]})
        if cell == "lstm":
            shapes.update({k: [layers * d, b, h] for k in ["c0", "cn", "dcn", "dc0"]})
        for k, (tname, shape) in enumerate(sorted(shapes.items())):
            n = 1
            for s in shape:
                n *= s
            tensors.append((tname, dtype, shape, values(n, 100 + k)))
        tensors += [("grad." + p[0], p[1], p[2], p[3]) for p in param_tensors(cell, i, h, layers, bidir, True, proj, dtype)]
        if lengths:
            tensors.append(("lengths", ldtype, [b], lengths))
        meta = config_meta(cell, i, h, layers, bidir, True, proj, width)
        meta.update({"steps": str(t).zfill(width), "batch": str(b).zfill(width)})
        write(os.path.join(case_dir, name + ".safetensors"), safetensors(tensors, meta))
    structured_seeds()


def structured_seeds():
    for target, count, size in [("config_build", 8, 64), ("seq_shape", 12, 256), ("capi_args", 24, 768)]:
        state = sum(map(ord, target))
        for n in range(count):
            out = bytearray()
            for _ in range(size):
                state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
                out.append(state >> 56)
            write(os.path.join(HERE, "corpus", target, f"seed{n:02}"), bytes(out))


if __name__ == "__main__":
    main()
