#!/usr/bin/env python3
"""Benchmark rnn-kernels against its peers, side by side, and print a markdown table.

Ours is the Rust bench example (`target/release/examples/bench`, built once here with
`cargo build --release --example bench`); the peers are `benches/peers.py` (PyTorch CPU,
onnxruntime CPU, PyTorch CUDA/cuDNN when a GPU is there). Both print one JSON line per run in
the same format. Every run is a separate subprocess; per round, for each config and mode, the
impls run once each in an order that rotates from round to round, so machine noise falls on all
of them alike. A cell of the table is the median over rounds of that impl's per-run median.

Usage:
    python3 benches/compare.py                     # the default config list, 3 rounds
    python3 benches/compare.py --quick --ours reference
    python3 benches/compare.py --configs cuda --ours cuda --peers pytorch-cuda   # on a GPU machine
    python3 benches/compare.py --configs cuda --ours cuda --peers pytorch-cuda --dtype f16   # .half()
    python3 benches/compare.py --dtype bf16 --peers pytorch-cpu   # 16-bit storage on the CPU, PyTorch in bf16
    python3 benches/compare.py --configs "lstm-64-64-8-20:inference,gru-512-512-64-100:train" \
        --rounds 5 --threads 2 --ours cpu,reference --peers pytorch-cpu,onnxruntime-cpu \
        --json out.jsonl
    # a change against the build before it: both binaries alternate in every round
    python3 benches/compare.py --peers "" --rounds 5 --baseline-bin /path/to/old/target/release/examples/bench
    # the ONNX options against onnxruntime (single-node models built with onnx.helper)
    python3 benches/compare.py --configs onnx
    # what each cell option costs: plain and with the option, alternately, per round
    python3 benches/compare.py --option-cost --rounds 3
    # issue 18's rows: Luong general attention forward+backward (B 64, T_enc = T_dec = 50,
    # H 512; benches/attention.py) and one whole training step of examples/seq2seq.rs's model
    # (benches/seq2seq.py), each against the same computation in PyTorch CPU
    python3 benches/compare.py --configs seq2seq --rounds 5 --threads 2

Config syntax: `cell-I-H-B-T[-lL][-bi][options][:mode]`, mode `inference` (default) or `train`;
options are suffixes in any order: `-rev` (direction reverse), `-sum` (merge sum), `-peep`
(peepholes), `-clipX` (gate clip X), `-if` (input_forget), `-cho` (GRU linear_before_reset=0),
`-ln` (layer norm, Haste's; no peer has it), `-bf` (batch-first), `-dropP` (dropout P between
layers; it acts in `train` only). A peer that lacks an option
reads "n/a" (peers.py's `unsupported`).

`--configs seq2seq` is a table of its own (`model_rows`): rows whose ours is another example and
whose peer is another script, both printing the same JSON line, run alternately the same way
(per round each row's two runs in an order that flips from row to row and round to round):
`attention` (`examples/attention_bench.rs` against `benches/attention.py --peer`) and
`seq2seq-step` (`examples/seq2seq.rs --bench-steps` against `benches/seq2seq.py --peer`, which
also report the first step's loss from the same parameters, a check that both do the same
work). `--reps`/`--warmup` pass through; the peer is PyTorch CPU of the Python running this.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peers  # noqa: E402  (the config names and FLOP counts both scripts report)
ROOT = os.path.dirname(HERE)
PEERS_PY = os.path.join(HERE, "peers.py")

CELLS = peers.CELLS
KNOWN_PEERS = ("pytorch-cpu", "onnxruntime-cpu", "pytorch-cuda")

# The project's target table.
DEFAULT_CONFIGS = [
    "lstm-256-256-1-150:inference",
    "lstm-512-512-64-100:inference",
    "lstm-512-512-64-100:train",
    "gru-512-512-64-100:inference",
    "gru-512-512-64-100:train",
    "gru-1024-1024-4-375:inference",
    "rnn_relu-1760-1760-16-50:inference",
    "rnn_relu-1760-1760-16-50:train",
]

# The CUDA target table (issue #5): ours `--ours cuda` against PyTorch's cuDNN (`pytorch-cuda`).
# Select it with `--configs cuda`.
CUDA_CONFIGS = [
    "lstm-256-256-1-150:inference",
    "lstm-1024-1024-64-25:inference",
    "lstm-1024-1024-64-25:train",
    "lstm-2048-2048-128-25:train",
    "gru-1024-1024-4-1500:inference",
    "rnn_relu-1760-1760-16-50:train",
]

# The ONNX options against onnxruntime (`--configs onnx`): LSTM with peepholes, Cho's GRU.
ONNX_CONFIGS = [
    "lstm-256-256-1-150-peep:inference",
    "lstm-512-512-64-100-peep:inference",
    "lstm-512-512-64-100-peep-clip3-if:inference",
    "gru-512-512-64-100-cho:inference",
    "gru-1024-1024-4-375-cho:inference",
]

# `--option-cost`: each option's configuration beside the plain one it is timed against.
OPTION_COST_BASES = ["lstm-512-512-64-100", "gru-512-512-64-100"]
OPTION_COST_OPTIONS = {
    "lstm": ["-peep", "-clip3", "-if", "-ln", "-rev", "-bi/-bi-sum", "-bf"],
    "gru": ["-cho", "-clip3", "-ln", "-rev", "-bi/-bi-sum", "-bf"],
}

# `--configs seq2seq` (issue 18): (row name, our example, its flags, the peer script, its flags).
ATTENTION_FLAGS = ["--score", "general", "--batch", "64", "--queries", "50", "--steps", "50", "--hidden", "512",
                   "--output", "512"]
MODEL_ROWS = [
    ("attention", "attention_bench", ["--backend", "cpu"] + ATTENTION_FLAGS, "attention.py", ATTENTION_FLAGS),
    ("seq2seq-step", "seq2seq", ["--batch", "64"], "seq2seq.py", ["--batch", "64"]),
]

# A smoke list that runs in seconds.
QUICK_CONFIGS = [
    "lstm-64-64-8-20:inference",
    "lstm-64-64-8-20:train",
    "gru-64-64-8-20:inference",
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Configs


class Config:
    def __init__(self, cell, input_size, hidden, batch, steps, layers, bidirectional, mode, options=None):
        self.cell, self.input, self.hidden, self.batch, self.steps = cell, input_size, hidden, batch, steps
        self.layers, self.bidirectional, self.mode = layers, bidirectional, mode
        o = options or {}
        self.direction = o.get("direction")  # None, or "reverse"
        self.merge = o.get("merge", "concat")
        self.peephole = o.get("peephole", False)
        self.clip = o.get("clip", 0.0)
        self.input_forget = o.get("input_forget", False)
        self.cho = o.get("cho", False)
        self.layer_norm = o.get("layer_norm", False)
        self.batch_first = o.get("batch_first", False)
        self.dropout = o.get("dropout", 0.0)

    def _name(self, sizes):
        s = sizes
        if self.layers > 1:
            s += f"-l{self.layers}"
        if self.bidirectional:
            s += "-bi"
        return s + peers.option_suffix(self)

    @property
    def label(self):
        """As in the project's target table: cell-I-H-B-T (plus -lL, -bi)."""
        return self._name(f"{self.cell}-{self.input}-{self.hidden}-{self.batch}-{self.steps}")

    @property
    def json_config(self):
        """The "config" string of the JSON lines (peers.py's `config_name`)."""
        return peers.config_name(self)

    @property
    def key(self):
        return (self.label, self.mode)

    def flags(self):
        f = ["--cell", self.cell, "--input", str(self.input), "--hidden", str(self.hidden),
             "--batch", str(self.batch), "--steps", str(self.steps), "--mode", self.mode]
        if self.layers > 1:
            f += ["--layers", str(self.layers)]
        if self.bidirectional:
            f += ["--bidirectional"]
        if self.direction:
            f += ["--direction", self.direction]
        if self.merge != "concat":
            f += ["--merge", self.merge]
        if self.peephole:
            f += ["--peephole"]
        if self.clip:
            f += ["--clip", peers.fmt_clip(self.clip)]
        if self.input_forget:
            f += ["--input-forget"]
        if self.cho:
            f += ["--cho"]
        if self.layer_norm:
            f += ["--layer-norm"]
        if self.batch_first:
            f += ["--batch-first"]
        if self.dropout:
            f += ["--dropout", peers.fmt_clip(self.dropout)]
        return f

    def gemm_flops(self):
        """GEMM FLOPs only (peers.py's `gemm_flops`, which the JSON lines report too)."""
        return peers.gemm_flops(self.cell, self.input, self.hidden, self.batch, self.steps, self.layers,
                                self.bidirectional, self.mode, merge_sum=self.merge == "sum")


def peer_lacks_option(impl, c):
    """peers.py's reason why `impl` cannot run config `c` (an option it lacks), or None. (In
    `main`, `peers` is the list of peer names.)"""
    return peers.unsupported(impl, c)


def parse_config(spec):
    spec = spec.strip()
    mode = "inference"
    if ":" in spec:
        spec, mode = spec.split(":", 1)
        mode = mode.strip()
    elif " " in spec:
        spec, mode = spec.split(None, 1)
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be inference or train, got {mode!r}")
    parts = spec.strip().split("-")
    if len(parts) < 5 or parts[0] not in CELLS:
        raise ValueError(f"expected cell-I-H-B-T[-lL][-bi] with cell in {CELLS}, got {spec!r}")
    try:
        i, h, b, t = (int(p) for p in parts[1:5])
    except ValueError:
        raise ValueError(f"I, H, B, T must be integers in {spec!r}") from None
    layers, bi, opts = 1, False, {}
    flags = {"rev": ("direction", "reverse"), "sum": ("merge", "sum"), "peep": ("peephole", True),
             "if": ("input_forget", True), "cho": ("cho", True), "ln": ("layer_norm", True),
             "bf": ("batch_first", True)}
    for extra in parts[5:]:
        if extra == "bi":
            bi = True
        elif extra.startswith("l") and extra[1:].isdigit():
            layers = int(extra[1:])
        elif extra in flags:
            opts[flags[extra][0]] = flags[extra][1]
        elif extra.startswith("clip"):
            try:
                opts["clip"] = float(extra[4:])
            except ValueError:
                raise ValueError(f"-clipX needs a number X in {spec!r}") from None
            if not (0 < opts["clip"] < float("inf")):
                raise ValueError(f"-clipX needs a finite X > 0 in {spec!r}")
        elif extra.startswith("drop"):
            try:
                opts["dropout"] = float(extra[4:])
            except ValueError:
                raise ValueError(f"-dropP needs a number P in {spec!r}") from None
            if not (0 < opts["dropout"] < 1):
                raise ValueError(f"-dropP needs a probability 0 < P < 1 in {spec!r}")
        else:
            raise ValueError(f"unknown config suffix {extra!r} in {spec!r} "
                             "(use -lL, -bi, -rev, -sum, -peep, -clipX, -if, -cho, -ln, -bf)")
    if min(i, h, b, t, layers) < 1:
        raise ValueError(f"sizes must be >= 1 in {spec!r}")
    if opts.get("direction") == "reverse" and bi:
        raise ValueError(f"-rev and -bi exclude each other in {spec!r}")
    if opts.get("merge") == "sum" and not bi:
        raise ValueError(f"-sum needs -bi in {spec!r}")
    return Config(parts[0], i, h, b, t, layers, bi, mode, opts)


# ---------------------------------------------------------------------------------------------
# Machine / versions


def cpu_model():
    """Model name from /proc/cpuinfo, with family/model and the widest SIMD it reports (virtual
    machines often show a bare "AMD EPYC"; family 25 is Zen 3/Zen 4, AVX-512 means Zen 4)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                fields.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    extra = []
    if "cpu family" in fields and "model" in fields:
        extra.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = set(fields.get("flags", "").split())
    simd = [x for x in ("avx512f", "avx2", "fma") if x in flags]
    if simd:
        extra.append("+".join(simd))
    return name + (f" ({', '.join(extra)})" if extra else "")


def core_counts():
    logical = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = logical
    physical = set()
    try:
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "physical id":
                    phys = v.strip()
                elif k == "core id":
                    core = v.strip()
                elif not line.strip():
                    if core is not None:
                        physical.add((phys, core))
                    phys = core = None
            if core is not None:
                physical.add((phys, core))
    except OSError:
        pass
    return logical, usable, len(physical) or None


def command_version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def peers_info():
    try:
        r = subprocess.run([sys.executable, PEERS_PY, "--info"], capture_output=True, text=True, timeout=300)
        for line in r.stdout.splitlines():
            if line.startswith("{"):
                return json.loads(line)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as e:
        log(f"compare.py: peers.py --info failed: {e}")
    return {"impls": [], "versions": {}}


# ---------------------------------------------------------------------------------------------
# Running


def build_ours(args, backends):
    """Build the bench example once (with the cuda feature when a CUDA backend is asked for);
    return (binary path or None, reason if None)."""
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    binary = args.bin or os.path.join(target, "release", "examples", "bench")
    if not args.bin and not args.no_build:
        cmd = ["cargo", "build", "--release", "--example", "bench", "--example", "gemm_bench", "--example", "handoff"]
        if "cuda" in backends:
            cmd += ["--features", "cuda"]
        log("compare.py: " + " ".join(cmd))
        try:
            r = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr)
            if r.returncode != 0:
                return None, f"`{' '.join(cmd)}` failed (exit {r.returncode})"
        except OSError as e:
            return None, f"cargo not runnable: {e}"
    if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        return None, f"{binary} not found"
    return binary, None


ROOF_SHAPE = (6400, 512, 2048)


def measure_handoff(binary):
    """The CPU backend's thread hand-off (examples/handoff.rs) in ns, or None."""
    exe = os.path.join(os.path.dirname(binary), "handoff")
    if not os.access(exe, os.X_OK):
        return None
    try:
        r = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
        return float(r.stdout.split()[-2])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def measure_roof(binary, threads):
    """The machine's SGEMM roof as our best packed kernel reaches it: GFLOP/s of
    `gemm_bench 6400 512 2048` (the input projection of lstm-512-512-64-100), or None."""
    gemm = os.path.join(os.path.dirname(binary), "gemm_bench")
    if not os.access(gemm, os.X_OK):
        return None, None
    kinds = ["avx512-packed", "avx2-packed", "neon-packed"]
    for kind in kinds:
        env = dict(os.environ, GEMM_BENCH_KINDS=kind)
        m, k, n = ROOF_SHAPE
        try:
            r = subprocess.run([gemm, str(m), str(k), str(n), str(threads), "20"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode != 0:
            continue  # this CPU lacks the kind
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[-1] == "GFLOP/s":
                try:
                    return float(parts[-2]), kind
                except ValueError:
                    pass
    return None, None


def run_one(cmd, timeout):
    """Run one subprocess; return (list of JSON dicts from stdout, error text or None)."""
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout} s"
    except OSError as e:
        return [], str(e)
    lines = []
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict) and "median_ms" in d:
                lines.append(d)
    err = None
    if r.returncode != 0 or not lines:
        tail = [l for l in r.stderr.strip().splitlines() if l.strip()][-3:]
        err = (f"exit {r.returncode}" if r.returncode != 0 else "no result line") + (
            ": " + " / ".join(tail) if tail else "")
    return lines, err


def fmt_ms(v):
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 10:
        return f"{v:.2f}"
    return f"{v:.3f}"


def option_cost(args, cmdline):
    """`--option-cost`: for each cell option, its configuration and the plain one it is timed
    against run alternately (the order flips from pair to pair and round to round), each a
    separate run of our bench binary; per round the ratio option/plain, then the median over
    rounds with its [min, max]. Prints a markdown table."""
    rounds = args.rounds if args.rounds is not None else 3
    backend = next((b.strip() for b in args.ours.split(",") if b.strip()), "cpu")
    binary, why_not = build_ours(args, [backend])
    if binary is None:
        log(f"compare.py: ours unavailable: {why_not}")
        return 1
    pairs = []  # (plain Config, option Config, option name)
    for base in OPTION_COST_BASES:
        cell = base.split("-")[0]
        for mode in ("inference", "train"):
            for opt in OPTION_COST_OPTIONS[cell]:
                plain_suffix, opt_suffix = opt.split("/") if "/" in opt else ("", opt)
                pairs.append((parse_config(f"{base}{plain_suffix}:{mode}"), parse_config(f"{base}{opt_suffix}:{mode}"),
                              opt_suffix.removeprefix("-bi").lstrip("-")))
    json_out = open(args.json, "w") if args.json else None
    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ms = {}  # (pair index, "plain" | "option") -> {round: ms}
    failed = {}  # (pair index, "plain" | "option") -> why
    isa = set()
    for rnd in range(rounds):
        for pi, (plain, opt, name) in enumerate(pairs):
            order = [("plain", plain), ("option", opt)]
            if (rnd + pi) % 2:
                order.reverse()
            got = []
            for which, c in order:
                if (pi, which) in failed:
                    continue
                cmd = [binary, "--backend", backend] + c.flags() + ["--threads", str(args.threads)]
                if args.reps is not None:
                    cmd += ["--reps", str(args.reps)]
                if args.warmup is not None:
                    cmd += ["--warmup", str(args.warmup)]
                lines, err = run_one(cmd, args.timeout)
                if not lines:
                    failed[(pi, which)] = err or "no result"
                    log(f"compare.py: {c.label} {c.mode}: {err}")
                    continue
                line = lines[-1]
                if line.get("config") != c.json_config:
                    log(f"compare.py: warning: reported config {line.get('config')!r}, expected {c.json_config!r}")
                if "isa" in line:
                    isa.add(line["isa"])
                if json_out:
                    json_out.write(json.dumps(line, separators=(",", ":")) + "\n")
                ms.setdefault((pi, which), {})[rnd] = float(line["median_ms"])
                got.append(f"{which} {fmt_ms(float(line['median_ms']))} ms")
            log(f"[round {rnd + 1}/{rounds}] {plain.label} {plain.mode} / {name}: " + ", ".join(got))
    if json_out:
        json_out.close()

    logical, usable, physical = core_counts()
    out = ["### rnn-kernels: the cost of each cell option", ""]
    out.append(f"- command: `{cmdline}`")
    out.append(f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}")
    out.append(f"- machine: {cpu_model()}, {logical} logical CPUs" + (f" ({physical} physical cores)" if physical else "")
               + f"; threads: {args.threads}" + (f"; load average at start {load:.2f}" if load is not None else ""))
    out.append(f"- ours: rnn-kernels-{backend}" + (f" ({', '.join(sorted(isa))})" if isa else ""))
    out.append(f"- {rounds} round(s); per round and option, the plain configuration and the option's run alternately "
               "(order flipped from pair to pair and round to round), each the per-run median wall time (ms) of one "
               "forward (inference) or forward+backward (train); option/plain: per round, then the median over rounds "
               "and [min, max] (< 1.10 meets the 10 % budget)")
    out.append("")
    out.append("| config | mode | option | plain (ms) | with option (ms) | option/plain | [min, max] |")
    out.append("|---|---|---|---:|---:|---:|---|")
    for pi, (plain, opt, name) in enumerate(pairs):
        a, b = ms.get((pi, "plain"), {}), ms.get((pi, "option"), {})
        pv = fmt_ms(statistics.median(a.values())) if a else "failed"
        ov = fmt_ms(statistics.median(b.values())) if b else ("unsupported" if "does not support" in failed.get((pi, "option"), "") else "failed")
        ratios = [b[r] / a[r] for r in b if r in a]
        ratio = f"{statistics.median(ratios):.3f}" if ratios else "–"
        spread = f"[{min(ratios):.3f}, {max(ratios):.3f}]" if ratios else "–"
        out.append(f"| {plain.label} | {plain.mode} | {name} | {pv} | {ov} | {ratio} | {spread} |")
    print("\n".join(out), flush=True)
    return 0


def model_rows(args, cmdline):
    """`--configs seq2seq`: the MODEL_ROWS, ours and the PyTorch peer alternately, `rounds`
    rounds; a markdown table of medians over rounds, ours/PyTorch per round and its median."""
    rounds = args.rounds if args.rounds is not None else 5
    examples = [r[1] for r in MODEL_ROWS]
    if not args.no_build:
        cmd = ["cargo", "build", "--release"] + [x for e in examples for x in ("--example", e)]
        log("compare.py: " + " ".join(cmd))
        if subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr).returncode != 0:
            log("compare.py: the build failed")
            return 1
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    json_out = open(args.json, "w") if args.json else None
    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ms, config, first_loss, failed, isa, torch_version = {}, {}, {}, {}, set(), None  # keyed (row, impl)
    for rnd in range(rounds):
        for ri, (name, example, flags, script, peer_flags) in enumerate(MODEL_ROWS):
            common = ["--threads", str(args.threads)]
            if args.reps is not None:
                common += ["--reps", str(args.reps)]
            if args.warmup is not None:
                common += ["--warmup", str(args.warmup)]
            ours_common = common
            if example == "seq2seq":  # its own names for reps and warm-up
                ours_common = ["--threads", str(args.threads), "--bench-steps", str(args.reps or 10)]
                ours_common += ["--bench-warmup", str(args.warmup)] if args.warmup is not None else []
            runs = [("ours", [os.path.join(target, "release", "examples", example)] + flags + ours_common),
                    ("pytorch-cpu", [sys.executable, os.path.join(HERE, script), "--peer"] + peer_flags + common)]
            if (rnd + ri) % 2:
                runs.reverse()
            got = []
            for impl, cmd in runs:
                if (name, impl) in failed:
                    continue
                lines, err = run_one(cmd, args.timeout)
                if not lines:
                    failed[(name, impl)] = err or "no result"
                    log(f"compare.py: {name} {impl}: {err}")
                    continue
                line = lines[-1]
                if json_out:
                    json_out.write(json.dumps(line, separators=(",", ":")) + "\n")
                config[(name, impl)] = line.get("config")
                if "first_loss" in line:
                    first_loss[(name, impl)] = line["first_loss"]
                if "isa" in line:
                    isa.add(line["isa"])
                torch_version = line.get("torch", torch_version)
                ms.setdefault((name, impl), {})[rnd] = float(line["median_ms"])
                got.append(f"{impl} {fmt_ms(float(line['median_ms']))} ms")
            log(f"[round {rnd + 1}/{rounds}] {name}: " + ", ".join(got))
    if json_out:
        json_out.close()

    logical, usable, physical = core_counts()
    out = ["### rnn-kernels vs PyTorch: attention and the seq2seq example's training step", ""]
    out.append(f"- command: `{cmdline}`")
    out.append(f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}")
    out.append(f"- machine: {cpu_model()}, {logical} logical CPUs" + (f" ({physical} physical cores)" if physical else "")
               + f"; threads per impl: {args.threads}" + (f"; load average at start {load:.2f}" if load is not None else ""))
    vers = [f"torch {torch_version}"] if torch_version else []
    rustc = command_version(["rustc", "--version"])
    vers += [rustc] if rustc else []
    out.append(f"- versions: {', '.join(vers) if vers else 'unknown'}" + (f"; ours: {', '.join(sorted(isa))}" if isa else ""))
    out.append(f"- {rounds} round(s), ours and PyTorch alternately (order flipped from row to row and round to round); "
               "a cell is the median over rounds of the per-run median wall time (ms); ours/PyTorch per round, its "
               "median and [min, max] (< 1: ours is faster). attention: one Luong general forward + backward "
               "(`examples/attention_bench.rs`, into the previous rep's results; `benches/attention.py`); seq2seq-step: one whole training step of "
               "`examples/seq2seq.rs`'s model, forward, loss, backward, clipping and Adam (`benches/seq2seq.py`)")
    out.append("")
    out.append("| row | config | ours (ms) | PyTorch CPU (ms) | ours/PyTorch | [min, max] | first loss (ours, PyTorch) |")
    out.append("|---|---|---:|---:|---:|---|---|")
    for name, *_ in MODEL_ROWS:
        a, b = ms.get((name, "ours"), {}), ms.get((name, "pytorch-cpu"), {})
        ov = fmt_ms(statistics.median(a.values())) if a else "failed"
        pv = fmt_ms(statistics.median(b.values())) if b else "failed"
        ratios = [a[r] / b[r] for r in a if r in b]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "–"
        spread = f"[{min(ratios):.2f}, {max(ratios):.2f}]" if ratios else "–"
        cfg = config.get((name, "ours")) or config.get((name, "pytorch-cpu")) or "–"
        if config.get((name, "pytorch-cpu"), cfg) != cfg:
            log(f"compare.py: warning: {name}: ours ran {cfg!r}, PyTorch {config[(name, 'pytorch-cpu')]!r}")
        fl = [first_loss.get((name, x)) for x in ("ours", "pytorch-cpu")]
        fl_cell = ", ".join(f"{x:.4f}" if x is not None else "–" for x in fl) if any(x is not None for x in fl) else "–"
        if None not in fl and abs(fl[0] - fl[1]) > 1e-3:
            log(f"compare.py: warning: {name}: the first step's losses differ ({fl_cell}): not the same computation")
        out.append(f"| {name} | {cfg} | {ov} | {pv} | {ratio} | {spread} | {fl_cell} |")
    print("\n".join(out), flush=True)
    return 0 if not failed else 1


def main():
    p = argparse.ArgumentParser(description="rnn-kernels vs PyTorch / onnxruntime, side by side.")
    p.add_argument("--configs", default=None,
                   help='comma-separated "cell-I-H-B-T[-lL][-bi]:mode" (default: the target table; '
                        '"cuda": the CUDA target table; "onnx": the ONNX options; "seq2seq": attention and the '
                        'seq2seq example\'s training step against PyTorch)')
    p.add_argument("--quick", action="store_true", help="tiny configs, 1 round, few reps: a smoke test")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick; 5 with --configs seq2seq)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=None,
                   help="reps per run, passed to every impl (default: each impl's own; 5 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="warmup reps, passed to every impl")
    p.add_argument("--ours", default="cpu", help="our backends, comma-separated (e.g. cpu,reference)")
    p.add_argument("--peers", default=None,
                   help=f"peers, comma-separated from {','.join(KNOWN_PEERS)} (default: all available)")
    p.add_argument("--dtype", choices=("f32", "f16", "bf16"), default="f32",
                   help="storage type: f16/bf16 for --ours cpu or cuda against PyTorch in the same type "
                        "(onnxruntime is f32 only; default f32)")
    p.add_argument("--json", default=None, metavar="OUT.jsonl", help="also save every raw JSON line here")
    p.add_argument("--bin", default=None, help="our bench binary (default: build target/release/examples/bench)")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build; use the binary as it is")
    p.add_argument("--baseline-bin", default=None, metavar="PATH",
                   help="another build's bench binary (e.g. before a change): each of our backends also runs "
                        "with it, in the same rotation, and the table gains the per-round ratio ours/baseline")
    p.add_argument("--timeout", type=int, default=900, help="seconds per subprocess (default 900)")
    p.add_argument("--option-cost", action="store_true",
                   help="time each cell option against the plain cell (lstm-/gru-512-512-64-100, inference and "
                        "train; ours only, the first --ours backend): per round, plain and option alternate, "
                        "and the table gives the median over rounds of option/plain")
    args = p.parse_args()

    cmdline = "python3 " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be >= 1")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    reps = args.reps if args.reps is not None else (5 if args.quick else None)
    peer_warmup = args.warmup if args.warmup is not None else (1 if args.quick else None)

    if args.option_cost:
        return option_cost(args, cmdline)
    if args.configs == "seq2seq":
        return model_rows(args, cmdline)
    if args.configs == "cuda":
        specs = CUDA_CONFIGS
    elif args.configs == "onnx":
        specs = ONNX_CONFIGS
    else:
        specs = args.configs.split(",") if args.configs else (QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS)
    try:
        configs = [parse_config(s) for s in specs if s.strip()]
    except ValueError as e:
        p.error(str(e))
    if not configs:
        p.error("no configs")

    backends = [b.strip() for b in args.ours.split(",") if b.strip()]
    if args.dtype != "f32" and any(b not in ("cpu", "cuda") for b in backends):
        p.error(f"--dtype {args.dtype}: only --ours cpu and cuda store 16-bit")
    ours = [f"rnn-kernels-{b}" for b in backends]
    if args.baseline_bin and not os.access(args.baseline_bin, os.X_OK):
        p.error(f"--baseline-bin {args.baseline_bin}: not an executable file")
    # The baseline build's runs of each backend, as impls of their own.
    base = [f"{x}@baseline" for x in ours] if args.baseline_bin else []

    info = peers_info()
    vers = info.get("versions", {})
    if args.peers is None:
        peers = [x for x in KNOWN_PEERS if x in info.get("impls", [])]
        if not peers:
            log("compare.py: no peer is available (pip install -r benches/requirements-peers.txt)")
    else:
        peers = [x.strip() for x in args.peers.split(",") if x.strip()]  # "" for none
        bad = [x for x in peers if x not in KNOWN_PEERS]
        if bad:
            p.error(f"unknown peer(s) {bad}; known: {', '.join(KNOWN_PEERS)}")
        for x in peers:
            if x not in info.get("impls", []):
                log(f"compare.py: peer {x} is not available here; its column will read 'unavailable'")

    binary, why_not = (None, "no backend requested") if not backends else build_ours(args, backends)
    if backends and binary is None:
        log(f"compare.py: ours unavailable: {why_not}")

    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > 0.5:
        log(f"compare.py: load average is {load:.2f} before starting; timings may be noisy")

    json_out = open(args.json, "w") if args.json else None
    results = {}  # (config key, impl) -> [median_ms per round]
    status = {}  # (config key, impl) -> reason why there is no number
    isa = set()

    for impl in ours + base:
        if binary is None:
            for c in configs:
                status[(c.key, impl)] = "unavailable"
    for impl in peers:
        for c in configs:
            if impl not in info.get("impls", []):
                status[(c.key, impl)] = "unavailable"
            elif impl == "onnxruntime-cpu" and c.mode == "train":
                status[(c.key, impl)] = "n/a"
            elif peer_lacks_option(impl, c):
                status[(c.key, impl)] = "n/a"

    impls_all = ours + base + peers
    roofs, roof_kind = {}, None  # round -> GFLOP/s
    by_round = {}  # (config key, impl) -> {round: ms}
    cpu_ours = binary is not None and any(b != "cuda" and b != "reference" for b in backends)
    handoffs = {}  # round -> ns
    for rnd in range(rounds):
        if cpu_ours and args.threads > 1:
            ho = measure_handoff(binary)
            if ho is not None:
                handoffs[rnd] = ho
                log(f"[round {rnd + 1}/{rounds}] thread hand-off: {ho:.0f} ns")
        if cpu_ours:
            r, kind = measure_roof(binary, args.threads)
            if r is not None:
                roofs[rnd] = r
                roof_kind = kind
                log(f"[round {rnd + 1}/{rounds}] SGEMM roof: {r:.1f} GFLOP/s ({kind})")
        for ci, c in enumerate(configs):
            todo = [x for x in impls_all if (c.key, x) not in status]
            if not todo:
                continue
            shift = (rnd + ci) % len(todo)
            order = todo[shift:] + todo[:shift]
            got = []
            for impl in order:
                if impl in ours or impl in base:
                    mine = impl in ours
                    backend = backends[ours.index(impl) if mine else base.index(impl)]
                    cmd = [binary if mine else args.baseline_bin, "--backend", backend] + c.flags() + ["--threads", str(args.threads)]
                    if args.dtype != "f32":
                        cmd += ["--dtype", args.dtype]
                    if reps is not None:
                        cmd += ["--reps", str(reps)]
                    if args.warmup is not None:
                        cmd += ["--warmup", str(args.warmup)]
                else:
                    cmd = [sys.executable, PEERS_PY, "--impl", impl] + c.flags() + ["--threads", str(args.threads)]
                    if args.dtype != "f32":
                        cmd += ["--dtype", args.dtype]
                    if reps is not None:
                        cmd += ["--reps", str(reps)]
                    if peer_warmup is not None:
                        cmd += ["--warmup", str(peer_warmup)]
                lines, err = run_one(cmd, args.timeout)
                line = next((d for d in lines if d.get("impl") == impl.removesuffix("@baseline")), lines[-1] if lines else None)
                if line is None:
                    status[(c.key, impl)] = "unavailable" if impl in ours + base else "failed"
                    log(f"compare.py: {impl} on {c.label} {c.mode}: {err}; recorded as {status[(c.key, impl)]}")
                    got.append(f"{impl} {status[(c.key, impl)]}")
                    continue
                if err:
                    log(f"compare.py: {impl} on {c.label} {c.mode}: {err}")
                if line.get("config") != c.json_config or line.get("mode") != c.mode:
                    log(f"compare.py: warning: {impl} reported config {line.get('config')!r} mode "
                        f"{line.get('mode')!r}, expected {c.json_config!r} {c.mode!r}")
                if "isa" in line:
                    isa.add(f"{impl}: {line['isa']}")
                if json_out:
                    for d in lines:
                        json_out.write(json.dumps(d, separators=(",", ":")) + "\n")
                    json_out.flush()
                results.setdefault((c.key, impl), []).append(float(line["median_ms"]))
                by_round.setdefault((c.key, impl), {})[rnd] = float(line["median_ms"])
                got.append(f"{impl} {fmt_ms(float(line['median_ms']))} ms")
            log(f"[round {rnd + 1}/{rounds}] {c.label} {c.mode}: " + ", ".join(got))
    if json_out:
        json_out.close()

    # ----- report -----
    def value(c, impl):
        v = results.get((c.key, impl))
        return statistics.median(v) if v else None

    def cell(c, impl):
        v = value(c, impl)
        return fmt_ms(v) if v is not None else status.get((c.key, impl), "–")

    logical, usable, physical = core_counts()
    cores = f"{logical} logical CPUs" + (f" ({physical} physical cores)" if physical else "")
    if usable != logical:
        cores += f", {usable} usable"
    v_parts = []
    for k in ("torch", "onnxruntime", "onnx", "cudnn", "python"):
        if k in vers:
            v_parts.append(f"{k} {vers[k]}")
    rustc = command_version(["rustc", "--version"])
    if rustc:
        v_parts.append(rustc)
    # GPU backends of ours are compared with the GPU peers (cuDNN), CPU ones with the CPU peers.
    gpu_ours = bool(backends) and all(b == "cuda" for b in backends)
    best_pool = [x for x in peers if x.endswith("-cuda") == gpu_ours]

    out = []
    out.append("### rnn-kernels vs peers")
    out.append("")
    out.append(f"- command: `{cmdline}`")
    out.append(f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}")
    out.append(f"- machine: {cpu_model()}, {cores}; threads per impl: {args.threads}"
               + (f"; load average at start {load:.2f}" if load is not None else ""))
    if "gpu" in vers:
        out.append(f"- GPU (pytorch-cuda): {vers['gpu']}, CUDA {vers.get('cuda')}, cuDNN {vers.get('cudnn')}")
    out.append(f"- versions: {', '.join(v_parts) if v_parts else 'unknown'}")
    if isa:
        out.append(f"- ours: {'; '.join(sorted(isa))}")
    out.append(f"- {rounds} round(s), impls in rotating order; each cell is the median over rounds of the "
               f"per-run median wall time (ms) of one forward (inference) or forward+backward (train), "
               f"{args.dtype}{' storage, f32 accumulation' if args.dtype != 'f32' else ''}, time-major, h0 = 0")
    out.append(f"- best peer: fastest {'GPU' if gpu_ours else 'CPU'} peer; ratio = ours / best peer (< 1: ours is faster); "
               "GFLOP/s counts GEMM FLOPs only (2·G·H·(I+H)·B·T per layer·direction, ×3 for train)")
    roof = statistics.median(roofs.values()) if roofs else None
    if roof is not None:
        m, k, n = ROOF_SHAPE
        out.append(f"- SGEMM roof: `gemm_bench {m} {k} {n} {args.threads}` ({roof_kind}, our fastest kernel), "
                   f"run once at the start of each round: {', '.join(f'{roofs[r]:.0f}' for r in sorted(roofs))} "
                   f"GFLOP/s; \"% roof\" = the median over rounds of ours GFLOP/s / that round's roof")
    if handoffs:
        out.append(f"- thread hand-off (`examples/handoff.rs`, a round trip between two of our threads) at the start "
                   f"of each round: {', '.join(f'{handoffs[r]:.0f}' for r in sorted(handoffs))} ns "
                   "(it sets what splitting a small batch's per-step product costs)")
    if base:
        out.append("- ours/baseline: per round, ours divided by the baseline build's time in the same round "
                   f"(`--baseline-bin {args.baseline_bin}`), the median over rounds, then [min, max] over rounds "
                   "(< 1: this build is faster)")
    out.append("")

    head = ["config", "mode"] + [f"{x} (ms)" for x in ours + base] + [f"{x} (ms)" for x in peers] + ["best peer"]
    if len(ours) == 1:
        head += ["ours/best", "ours GFLOP/s"] + (["% roof"] if roof is not None else [])
    else:
        head += [f"{b}/best" for b in backends] + [f"{b} GFLOP/s" for b in backends]
    head += [f"{b}/baseline" for b in backends] if base else []
    out.append("| " + " | ".join(head) + " |")
    align = ["---", "---"] + ["---:"] * (len(ours) + len(base) + len(peers)) + ["---"]
    align += ["---:"] * (len(head) - len(align))
    out.append("|" + "|".join(align) + "|")
    for c in configs:
        row = [c.label, c.mode] + [cell(c, x) for x in ours + base] + [cell(c, x) for x in peers]
        pv = [(value(c, x), x) for x in best_pool if value(c, x) is not None]
        best = min(pv) if pv else None
        row.append(best[1] if best else "–")
        ratios, gfl = [], []
        for x in ours:
            v = value(c, x)
            ratios.append(f"{v / best[0]:.2f}" if (v is not None and best) else "–")
            gfl.append(f"{c.gemm_flops() / (v / 1e3) / 1e9:.1f}" if v is not None else "–")
        row += ratios + gfl
        if roof is not None and len(ours) == 1:
            runs = by_round.get((c.key, ours[0]), {})
            pct = [100 * c.gemm_flops() / (ms / 1e3) / 1e9 / roofs[r] for r, ms in runs.items() if r in roofs]
            row.append(f"{statistics.median(pct):.0f}" if pct else "–")
        for x, xb in zip(ours, base):
            mine, theirs = by_round.get((c.key, x), {}), by_round.get((c.key, xb), {})
            paired = [mine[r] / theirs[r] for r in mine if r in theirs]
            row.append(f"{statistics.median(paired):.3f} [{min(paired):.3f}, {max(paired):.3f}]" if paired else "–")
        out.append("| " + " | ".join(row) + " |")
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
