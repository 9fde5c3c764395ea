#!/usr/bin/env python3
"""Time the peers (PyTorch CPU, PyTorch CUDA through cuDNN, onnxruntime CPU) on one RNN configuration.

Prints one JSON line per (impl, config, mode) on stdout, in the same format as our Rust bench
example (`cargo run --release --example bench`), so the two can be compared line by line:

    {"impl":"pytorch-cpu","config":"lstm-i512-h512-b64-t100","cell":"lstm","input":512,
     "hidden":512,"batch":64,"steps":100,"layers":1,"bidirectional":false,"mode":"inference",
     "threads":2,"median_ms":12.3,"gflops":45.6}

Everything else (skipped impls, warnings, export chatter) goes to stderr. An impl that is not
installed is skipped with a note, never a crash; `train` is skipped for onnxruntime.

Cell options, as the Rust bench example takes them: `--peephole`, `--clip X`, `--input-forget`,
`--cho` (GRU, linear_before_reset=0), `--layer-norm`, `--direction forward|reverse|bidirectional`,
`--merge concat|sum`, `--batch-first`, `--dropout P`. The config name gains the same suffixes as
ours (`-rev`, `-sum`, `-peep`, `-clipX`, `-if`, `-cho`, `-ln`, `-bf`, `-dropP`) and the line an
"options" field (no peer
runs layer norm: it is Haste's, in neither PyTorch nor ONNX). PyTorch runs
`--batch-first` (its `batch_first=True`) and `--dropout` (its `dropout=P`) and no other option; onnxruntime runs the ONNX ones
(peephole, clip, input_forget, Cho's GRU, reverse) on a single-node LSTM/GRU/RNN model built with
`onnx.helper` (one layer), and not merge=sum (ONNX has no such merge) nor batch-first (its CPU
kernels refuse ONNX's `layout=1`). `unsupported(impl, a)` says why an impl skips a config.

Usage:
    python3 benches/peers.py --cell lstm --input 512 --hidden 512 --batch 64 --steps 100 \
        --mode inference --threads 2 [--layers 1] [--bidirectional] [--reps N] [--warmup N] \
        [--impl pytorch-cpu,onnxruntime-cpu,pytorch-cuda]
    python3 benches/peers.py --info      # one JSON line: available impls and package versions

Install the peers with `pip install -r benches/requirements-peers.txt`.
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
MODES = ("inference", "train")
ALL_IMPLS = ("pytorch-cpu", "onnxruntime-cpu", "pytorch-cuda")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}

# Adaptive repetition count (when --reps is not given): at least MIN_REPS reps and about
# TARGET_S seconds of timed work, at most MAX_REPS reps.
MIN_REPS = 5
TARGET_S = 1.0
MAX_REPS = 1000


def note(msg):
    print(f"peers.py: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Configuration, FLOPs, output line


def fmt_clip(x):
    """A clip threshold as Rust's `{}` of an f64 writes it: `3` for 3.0, `0.5`."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def is_bidirectional(a):
    """`--direction` decides when given, else `--bidirectional`."""
    d = getattr(a, "direction", None)
    return d == "bidirectional" if d else bool(a.bidirectional)


def option_names(a):
    """The configuration's options by their case-file names, in the order of the Rust
    `RnnConfig::options` (what our JSON lines report as "options")."""
    names = []
    if getattr(a, "direction", None) == "reverse":
        names.append("direction=reverse")
    if getattr(a, "merge", "concat") == "sum":
        names.append("merge=sum")
    if getattr(a, "peephole", False):
        names.append("peephole")
    if getattr(a, "clip", 0.0):
        names.append("gate_clip")
    if getattr(a, "input_forget", False):
        names.append("input_forget")
    if getattr(a, "cho", False):
        names.append("linear_before_reset=false")
    if getattr(a, "layer_norm", False):
        names.append("layer_norm")
    if getattr(a, "batch_first", False):
        names.append("batch_first")
    if getattr(a, "dropout", 0.0):
        names.append("dropout")
    return names


def option_suffix(a):
    """The config name's suffixes of the options (the Rust bench example's `option_suffix`)."""
    s = ""
    if getattr(a, "direction", None) == "reverse":
        s += "-rev"
    if getattr(a, "merge", "concat") == "sum":
        s += "-sum"
    if getattr(a, "peephole", False):
        s += "-peep"
    if getattr(a, "clip", 0.0):
        s += f"-clip{fmt_clip(a.clip)}"
    if getattr(a, "input_forget", False):
        s += "-if"
    if getattr(a, "cho", False):
        s += "-cho"
    if getattr(a, "layer_norm", False):
        s += "-ln"
    if getattr(a, "batch_first", False):
        s += "-bf"
    if getattr(a, "dropout", 0.0):
        s += f"-drop{fmt_clip(a.dropout)}"
    return s


def config_name(a):
    s = f"{a.cell}-i{a.input}-h{a.hidden}-b{a.batch}-t{a.steps}"
    if a.layers > 1:
        s += f"-l{a.layers}"
    if is_bidirectional(a):
        s += "-bi"
    return s + option_suffix(a)


def gemm_flops(cell, input_size, hidden, batch, steps, layers, bidirectional, mode, merge_sum=False):
    """FLOPs of the GEMMs only: 2*G*H*(I_l+H)*B*T per layer and direction; x3 for train. Above
    layer 0, I_l is D*H, or H with merge=sum."""
    g = GATES[cell]
    d = 2 if bidirectional else 1
    total = 0
    for layer in range(layers):
        i_l = input_size if layer == 0 else (hidden if merge_sum else d * hidden)
        total += d * 2 * g * hidden * (i_l + hidden) * batch * steps
    return total * (3 if mode == "train" else 1)


PYTORCH_OPTIONS = ("batch_first", "dropout")
ONNX_OPTIONS = ("direction=reverse", "peephole", "gate_clip", "input_forget", "linear_before_reset=false")


def unsupported(impl, a):
    """Why `impl` cannot run the configuration `a` (its options), or None when it can."""
    names = option_names(a)
    if impl.startswith("pytorch"):
        other = [n for n in names if n not in PYTORCH_OPTIONS]
        return f"PyTorch's modules have no {', '.join(other)}" if other else None
    if impl == "onnxruntime-cpu":
        other = [n for n in names if n not in ONNX_OPTIONS]
        if other:
            return f"onnxruntime's CPU RNN kernels have no {', '.join(other)}"
        if names and a.layers > 1:
            return "the ONNX options are timed on one layer (a single-node model)"
    return None


def emit(impl, a, median_ms):
    flops = gemm_flops(a.cell, a.input, a.hidden, a.batch, a.steps, a.layers, is_bidirectional(a), a.mode,
                       merge_sum=a.merge == "sum")
    line = {
        "impl": impl,
        "config": config_name(a),
        "cell": a.cell,
        "input": a.input,
        "hidden": a.hidden,
        "batch": a.batch,
        "steps": a.steps,
        "layers": a.layers,
        "bidirectional": is_bidirectional(a),
    }
    if option_names(a):
        line["options"] = ",".join(option_names(a))
    line |= {
        "mode": a.mode,
        "threads": a.threads,
        "dtype": a.dtype,
        "median_ms": round(median_ms, 4),
        "gflops": round(flops / (median_ms / 1e3) / 1e9, 3),
    }
    print(json.dumps(line, separators=(",", ":")), flush=True)


# ---------------------------------------------------------------------------------------------
# Timing


def time_reps(step, sync, warmup, reps):
    """(median ms, reps, fastest ms) of the wall time of `step`, after `warmup` untimed calls.
    `sync` runs before each rep's clock stops (CUDA synchronize; a no-op on CPU), so every rep
    starts with the device idle. With `reps` None the count is adaptive: at least MIN_REPS reps
    and about TARGET_S seconds in all (at most MAX_REPS reps)."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    while True:
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        if reps is not None:
            if len(times) >= reps:
                break
        elif len(times) >= MIN_REPS and (sum(times) >= TARGET_S or len(times) >= MAX_REPS):
            break
    return statistics.median(times) * 1e3, len(times), min(times) * 1e3


# ---------------------------------------------------------------------------------------------
# PyTorch


def import_torch(threads):
    import torch

    torch.set_num_threads(threads)
    try:
        # Allowed once, before any inter-op parallel work; a second call raises.
        torch.set_num_interop_threads(1)
    except RuntimeError as e:
        note(f"torch.set_num_interop_threads(1) not applied: {e}")
    return torch


def make_module(torch, a):
    kw = dict(num_layers=a.layers, bidirectional=is_bidirectional(a))
    if a.batch_first:
        kw["batch_first"] = True
    if getattr(a, "dropout", 0.0):
        kw["dropout"] = a.dropout
    if a.cell == "lstm":
        m = torch.nn.LSTM(a.input, a.hidden, **kw)
    elif a.cell == "gru":
        m = torch.nn.GRU(a.input, a.hidden, **kw)
    else:
        m = torch.nn.RNN(a.input, a.hidden, nonlinearity=a.cell[len("rnn_"):], **kw)
    return m


def make_inputs(torch, a, device):
    g = torch.Generator().manual_seed(1234)
    d = 2 if is_bidirectional(a) else 1
    x = torch.randn(a.steps, a.batch, a.input, generator=g).to(device)  # time-major [T, B, I]
    if a.batch_first:
        x = x.transpose(0, 1).contiguous()  # [B, T, I]
    h0 = torch.zeros(a.layers * d, a.batch, a.hidden, device=device)
    c0 = torch.zeros(a.layers * d, a.batch, a.hidden, device=device) if a.cell == "lstm" else None
    return x, h0, c0


def run_module(m, x, h0, c0):
    return m(x, (h0, c0)) if c0 is not None else m(x, h0)


def bench_pytorch(torch, a, device):
    torch.manual_seed(0)
    dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    m = make_module(torch, a).to(device=device, dtype=dt)
    x, h0, c0 = (None if t is None else t.to(dt) for t in make_inputs(torch, a, device))
    if device == "cuda":
        torch.backends.cudnn.enabled = True

        def sync():
            torch.cuda.synchronize()
    else:

        def sync():
            pass

    if a.mode == "inference":
        m.eval()

        def step():
            with torch.inference_mode():
                run_module(m, x, h0, c0)
    else:
        m.train()
        x = x.detach().requires_grad_(True)
        params = [p for p in m.parameters() if p.requires_grad]
        y0, _ = run_module(m, x, h0, c0)
        dy = torch.randn(y0.shape, generator=torch.Generator().manual_seed(99)).to(device=device, dtype=dt)
        del y0

        def step():
            y, _ = run_module(m, x, h0, c0)
            loss = (y * dy).sum()
            torch.autograd.grad(loss, params + [x])

    return time_reps(step, sync, a.warmup, a.reps)


# ---------------------------------------------------------------------------------------------
# onnxruntime (model exported from the same torch.nn module)


def export_onnx(torch, m, args, path):
    """Export to ONNX. The TorchScript exporter (dynamo=False) is tried first: it emits the
    native ONNX LSTM/GRU/RNN operators, which onnxruntime runs with its fused RNN kernels (the
    dynamo exporter unrolls vanilla RNNs into per-step MatMuls). Falls back to dynamo."""
    names_in = ["x", "h0"] + (["c0"] if len(args) == 3 else [])
    names_out = ["y", "hn"] + (["cn"] if len(args) == 3 else [])
    attempts = [
        ("torchscript", dict(dynamo=False, opset_version=17)),
        ("dynamo", dict(dynamo=True)),
        ("default", dict(opset_version=17)),
    ]
    errors = []
    for label, kw in attempts:
        buf_out, buf_err = io.StringIO(), io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
                warnings.simplefilter("ignore")
                torch.onnx.export(m, args, path, input_names=names_in, output_names=names_out, **kw)
            return label
        except Exception as e:  # noqa: BLE001 - any exporter failure means: try the next one
            errors.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))


class Wrapped:
    """A module taking (x, h0[, c0]) as separate tensors, so the ONNX graph has them as inputs."""

    @staticmethod
    def make(torch, m, lstm):
        class W(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = m

            if lstm:

                def forward(self, x, h0, c0):
                    y, (hn, cn) = self.rnn(x, (h0, c0))
                    return y, hn, cn
            else:

                def forward(self, x, h0):
                    y, hn = self.rnn(x, h0)
                    return y, hn

        return W().eval()


def session_options(ort, a):
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def bench_onnx_node(a):
    """onnxruntime on a single ONNX LSTM/GRU/RNN node with the ONNX options of `a`, built with
    onnx.helper (PyTorch cannot export them): weights uniform in +-1/sqrt(H), h0 (and c0) zero
    graph inputs, as the exported models have."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    h, d = a.hidden, (2 if is_bidirectional(a) else 1)
    g = GATES[a.cell]
    rng = np.random.default_rng(0)
    k = 1.0 / np.sqrt(h)

    def uniform(*shape):
        return rng.uniform(-k, k, size=shape).astype(np.float32)

    op = {"lstm": "LSTM", "gru": "GRU"}.get(a.cell, "RNN")
    direction = getattr(a, "direction", None) or ("bidirectional" if d == 2 else "forward")
    inits = [("W", uniform(d, g * h, a.input)), ("R", uniform(d, g * h, h)), ("B", uniform(d, 2 * g * h))]
    inputs = ["X", "W", "R", "B", "", "initial_h"]
    attrs = dict(hidden_size=h, direction=direction)
    if op == "LSTM":
        inputs += ["initial_c"]
        if a.peephole:
            inits.append(("P", uniform(d, 3 * h)))
            inputs.append("P")
        if a.input_forget:
            attrs["input_forget"] = 1
    elif op == "GRU":
        attrs["linear_before_reset"] = 0 if a.cho else 1
    else:
        attrs["activations"] = ["Tanh" if a.cell == "rnn_tanh" else "Relu"] * d
    if a.clip:
        attrs["clip"] = float(a.clip)
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, inputs, outputs, **attrs)
    f32 = TensorProto.FLOAT
    graph_in = [helper.make_tensor_value_info("X", f32, [a.steps, a.batch, a.input]),
                helper.make_tensor_value_info("initial_h", f32, [d, a.batch, h])]
    if op == "LSTM":
        graph_in.append(helper.make_tensor_value_info("initial_c", f32, [d, a.batch, h]))
    graph_out = [helper.make_tensor_value_info("Y", f32, [a.steps, d, a.batch, h])]
    graph = helper.make_graph([node], "rnn", graph_in, graph_out,
                              initializer=[helper.make_tensor(n, f32, v.shape, v.flatten()) for n, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # the IR of opset 17, which every onnxruntime since 1.12 reads
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(ort, a),
                                providers=["CPUExecutionProvider"])
    xg = np.random.default_rng(1234).standard_normal((a.steps, a.batch, a.input)).astype(np.float32)
    feeds = {"X": xg, "initial_h": np.zeros((d, a.batch, h), np.float32)}
    if op == "LSTM":
        feeds["initial_c"] = np.zeros((d, a.batch, h), np.float32)
    y = sess.run(["Y"], feeds)[0]
    if y.shape != (a.steps, d, a.batch, h) or not np.all(np.isfinite(y)):
        raise RuntimeError(f"the {op} node gave Y of shape {y.shape}, finite: {bool(np.all(np.isfinite(y)))}")
    note(f"onnxruntime {ort.__version__}: single {op} node, attributes {attrs}" + (", P" if "P" in inputs else ""))

    def step():
        sess.run(["Y"], feeds)

    return time_reps(step, lambda: None, a.warmup, a.reps)


def bench_onnxruntime(torch, a):
    import numpy as np
    import onnxruntime as ort

    torch.manual_seed(0)
    m = make_module(torch, a).eval()
    x, h0, c0 = make_inputs(torch, a, "cpu")
    lstm = c0 is not None
    args = (x, h0, c0) if lstm else (x, h0)
    w = Wrapped.make(torch, m, lstm)
    with torch.inference_mode():
        y_ref = w(*args)[0].numpy()

    with tempfile.TemporaryDirectory(prefix="rnn-peers-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        exporter = export_onnx(torch, w, args, path)
        so = session_options(ort, a)
        # The session holds the model in memory once created; the temp file can go after this.
        sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])

    graph_inputs = [i.name for i in sess.get_inputs()]
    arrays = {"x": x.numpy(), "h0": h0.numpy()}
    if lstm:
        arrays["c0"] = c0.numpy()
    # An exporter may drop an input it folded (h0 zeros); feed only what the graph takes.
    feeds = {n: np.ascontiguousarray(arrays[n]) for n in graph_inputs if n in arrays}
    missing = [n for n in graph_inputs if n not in arrays]
    if missing:
        raise RuntimeError(f"exported graph has unexpected inputs {missing}")
    out_name = sess.get_outputs()[0].name

    # Correctness check, once, untimed.
    y = sess.run([out_name], feeds)[0]
    err = float(np.max(np.abs(y - y_ref))) if y.shape == y_ref.shape else float("inf")
    if not err <= 1e-4:
        note(f"WARNING: onnxruntime output differs from PyTorch's (max abs err {err:.3g}, "
             f"shape {y.shape} vs {y_ref.shape}) for {config_name(a)}")
    note(f"onnxruntime {ort.__version__}: exported with the {exporter} exporter, max abs err vs torch {err:.2g}")

    def step():
        sess.run([out_name], feeds)

    return time_reps(step, lambda: None, a.warmup, a.reps)


# ---------------------------------------------------------------------------------------------
# Availability


def have_module(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def available_impls(torch):
    """Map impl -> None if usable, else the reason it is not."""
    out = {}
    out["pytorch-cpu"] = None if torch is not None else "torch is not installed"
    if not have_module("onnxruntime"):
        out["onnxruntime-cpu"] = "onnxruntime is not installed"
    elif not have_module("onnx"):
        out["onnxruntime-cpu"] = "onnx is not installed (needed by torch.onnx.export and onnx.helper)"
    else:
        out["onnxruntime-cpu"] = None
    if torch is None:
        out["pytorch-cuda"] = "torch is not installed"
    elif not torch.cuda.is_available():
        out["pytorch-cuda"] = "torch.cuda.is_available() is False"
    elif not torch.backends.cudnn.is_available():
        out["pytorch-cuda"] = "cuDNN is not available"
    else:
        out["pytorch-cuda"] = None
    return out


def versions(torch):
    v = {"python": sys.version.split()[0]}
    if torch is not None:
        v["torch"] = torch.__version__
        if torch.cuda.is_available():
            v["cuda"] = torch.version.cuda
            v["cudnn"] = torch.backends.cudnn.version()
            v["gpu"] = torch.cuda.get_device_name(0)
    for mod in ("onnxruntime", "onnx", "onnxscript", "numpy"):
        if have_module(mod):
            try:
                v[mod] = __import__(mod).__version__
            except Exception as e:  # noqa: BLE001
                v[mod] = f"error: {e}"
    return v


# ---------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description="Time PyTorch / onnxruntime RNNs; one JSON line per impl.")
    p.add_argument("--cell", choices=CELLS, default="lstm")
    p.add_argument("--input", type=int, default=512)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--mode", choices=MODES, default="inference")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=None,
                   help=f"timed reps (default: adaptive, >= {MIN_REPS} reps and ~{TARGET_S:g} s)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--impl", default=None,
                   help=f"comma-separated subset of {','.join(ALL_IMPLS)} (default: all available)")
    p.add_argument("--dtype", choices=("f32", "f16", "bf16"), default="f32",
                   help="storage of PyTorch's module and tensors (model.half() / .bfloat16(); on CUDA cuDNN "
                        "then uses tensor cores, on the CPU oneDNN's bf16 kernels where it has them); "
                        "onnxruntime is f32 only")
    p.add_argument("--tf32", action="store_true",
                   help="let cuDNN use TF32 for f32 RNNs on CUDA (default: off, full f32)")
    p.add_argument("--peephole", action="store_true", help="LSTM peepholes (ONNX P)")
    p.add_argument("--clip", type=float, default=0.0, help="gate clip threshold (ONNX clip; 0: none)")
    p.add_argument("--input-forget", action="store_true", help="LSTM coupled input-forget gate (ONNX input_forget)")
    p.add_argument("--cho", action="store_true", help="GRU with the reset gate before the matmul (ONNX linear_before_reset=0)")
    p.add_argument("--layer-norm", action="store_true", help="layer-normalised LSTM/GRU (Haste's; no peer has it: reported n/a)")
    p.add_argument("--direction", choices=("forward", "reverse", "bidirectional"), default=None,
                   help="ONNX direction (overrides --bidirectional)")
    p.add_argument("--merge", choices=("concat", "sum"), default="concat", help="bidirectional merge (Keras merge_mode)")
    p.add_argument("--batch-first", action="store_true", help="x [B, T, I] (PyTorch batch_first=True)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout between layers (PyTorch dropout=P; in train mode only; 0: none)")
    p.add_argument("--info", action="store_true",
                   help="print one JSON line with the available impls and package versions, and exit")
    a = p.parse_args(argv)
    for k in ("input", "hidden", "batch", "steps", "layers", "threads"):
        if getattr(a, k) < 1:
            p.error(f"--{k} must be >= 1")
    if a.reps is not None and a.reps < 1:
        p.error("--reps must be >= 1")
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    if not (a.clip >= 0 and a.clip != float("inf")):
        p.error("--clip must be a finite number >= 0")
    if a.impl is not None:
        impls = [s.strip() for s in a.impl.split(",") if s.strip()]
        bad = [s for s in impls if s not in ALL_IMPLS]
        if bad:
            p.error(f"unknown impl(s) {bad}; known: {', '.join(ALL_IMPLS)}")
        a.impl = impls
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        torch = import_torch(a.threads)
    except ImportError as e:
        torch = None
        note(f"torch not importable ({e}); the PyTorch peers, and onnxruntime on plain cells (exported from torch), are skipped")

    avail = available_impls(torch)
    if a.info:
        info = {"impls": [k for k, v in avail.items() if v is None], "versions": versions(torch)}
        print(json.dumps(info, separators=(",", ":")), flush=True)
        return 0

    requested = a.impl if a.impl is not None else [k for k in ALL_IMPLS if avail[k] is None]
    for k in ALL_IMPLS:
        if a.impl is None and avail[k] is not None:
            note(f"skipping {k}: {avail[k]}")

    if torch is not None and avail["pytorch-cuda"] is None:
        torch.backends.cudnn.enabled = True
        # Full f32 in cuDNN's RNNs unless --tf32 (PyTorch lets cuDNN use TF32 by default).
        try:
            rnn_prec = getattr(torch.backends.cudnn, "rnn", None)
            if rnn_prec is not None and hasattr(rnn_prec, "fp32_precision"):
                rnn_prec.fp32_precision = "tf32" if a.tf32 else "ieee"
            else:
                torch.backends.cudnn.allow_tf32 = bool(a.tf32)
        except Exception as e:  # noqa: BLE001
            note(f"could not set cuDNN TF32 mode: {e}")

    failures = 0
    for impl in requested:
        if avail[impl] is not None:
            note(f"skipping {impl}: {avail[impl]}")
            continue
        if impl == "onnxruntime-cpu" and a.dtype != "f32":
            note(f"skipping {impl} for --dtype {a.dtype}: onnxruntime's recurrent operators compute in f32 only")
            continue
        if impl == "onnxruntime-cpu" and a.mode == "train":
            note("skipping onnxruntime-cpu for train: onnxruntime is timed for inference only")
            continue
        why = unsupported(impl, a)
        if impl == "onnxruntime-cpu" and not option_names(a) and torch is None:
            why = "torch is not installed (needed to export the plain model; the ONNX options need only onnx)"
        if why:
            note(f"skipping {impl} for {config_name(a)}: {why}")
            continue
        try:
            if impl == "onnxruntime-cpu" and option_names(a):
                ms, n, best = bench_onnx_node(a)
            elif impl == "pytorch-cpu":
                ms, n, best = bench_pytorch(torch, a, "cpu")
            elif impl == "pytorch-cuda":
                ms, n, best = bench_pytorch(torch, a, "cuda")
            else:
                ms, n, best = bench_onnxruntime(torch, a)
        except Exception as e:  # noqa: BLE001 - report, go on with the other impls
            failures += 1
            note(f"{impl} failed on {config_name(a)} {a.mode}: {type(e).__name__}: {e}")
            continue
        note(f"{impl} {config_name(a)} {a.mode}: median {ms:.3f} ms over {n} reps (min {best:.3f} ms)")
        if ms > 3 * best:
            note(f"WARNING: {impl} timing is unstable (median {ms / best:.1f}x the fastest rep): is the "
                 f"machine busy? (load average {os.getloadavg()[0]:.2f})")
        emit(impl, a, ms)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
