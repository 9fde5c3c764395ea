#!/usr/bin/env python3
"""Attention forward + backward: rnn-kernels against PyTorch, side by side, on the CPU (default)
or the GPU (`--device cuda`: our CUDA backend on device buffers against PyTorch's CUDA tensors).

Ours is `target/release/examples/attention_bench` (built here once); the peer is this script
with `--peer`: the same computation written as a PyTorch user writes it (`k @ W_aᵀ`, `bmm`, a
`masked_fill` softmax, `bmm` for the context, `tanh(cat(c, q) @ W_cᵀ)`), autograd for the
backward from `d_context` and `d_hidden`, in float32 on the same number of threads. Each run is
a subprocess; per round both run once, in an order that alternates, and a cell of the table is
the median over rounds of each run's median time. On the GPU both time a rep to a device
synchronisation.

Usage:
    python3 benches/attention.py [--score general] [--batch 64] [--queries 50] [--steps 50]
        [--hidden 512] [--output 512] [--threads 2] [--rounds 5] [--reps 10] [--varlen]
        [--device cpu|cuda] [--bin PATH (ours, prebuilt: no cargo build)]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, "target", "release", "examples", "attention_bench")
SIZES = ("batch", "queries", "steps", "hidden", "output", "threads", "reps")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--score", default="general", choices=["dot", "general", "concat", "additive"])
    for name, default in zip(SIZES, (64, 50, 50, 512, 512, 2, 10)):
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--varlen", action="store_true")
    p.add_argument("--alloc", action="store_true",
                   help="ours makes every result anew (the allocating calls) instead of writing into the previous rep's")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bin", help="our attention_bench, already built (--features cuda for --device cuda)")
    p.add_argument("--peer", action="store_true", help="run the PyTorch peer once and print its JSON line")
    return p.parse_args(argv)


def lengths(a):
    return [1 + (b * 7919) % a.steps if a.varlen else a.steps for b in range(a.batch)]


def peer(a):
    import time

    import torch

    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(1)
    h, o = a.hidden, a.output
    dev = torch.device(a.device)
    u = lambda *s, r=1.0: ((torch.rand(*s, generator=g) * 2 - 1) * r).to(dev)
    keys = u(a.steps, a.batch, h).requires_grad_()
    queries = u(a.queries, a.batch, h).requires_grad_()
    r = 1.0 / h**0.5
    w = {}
    if a.score == "general":
        w["weight_a"] = u(h, h, r=r)
    elif a.score == "concat":
        w["weight_a"], w["v_a"] = u(h, 2 * h, r=r), u(h, r=r)
    elif a.score == "additive":
        w["weight_key"], w["weight_query"], w["v"] = u(h, h, r=r), u(h, h, r=r), u(h, r=r)
    if o > 0:
        w["weight_c"] = u(o, 2 * h, r=r)
    for t in w.values():
        t.requires_grad_()
    pad = (torch.arange(a.steps)[None, :] >= torch.tensor(lengths(a))[:, None]).to(dev)
    d_context = torch.ones(a.batch, a.queries, h, device=dev)
    d_hidden = torch.ones(a.batch, a.queries, o, device=dev)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)

    def step():
        k = keys.permute(1, 0, 2)
        q = queries.permute(1, 0, 2)
        if a.score == "dot":
            e = q @ k.transpose(1, 2)
        elif a.score == "general":
            e = q @ (k @ w["weight_a"].T).transpose(1, 2)
        else:
            if a.score == "concat":
                wq, wk, v = w["weight_a"][:, :h], w["weight_a"][:, h:], w["v_a"]
            else:
                wq, wk, v = w["weight_query"], w["weight_key"], w["v"]
            e = torch.tanh((q @ wq.T)[:, :, None, :] + (k @ wk.T)[:, None, :, :]) @ v
        alpha = torch.softmax(e.masked_fill(pad[:, None, :], float("-inf")), dim=-1)
        c = alpha @ k
        loss = (c * d_context).sum()
        if o > 0:
            loss = loss + (torch.tanh(torch.cat([c, q], dim=-1) @ w["weight_c"].T) * d_hidden).sum()
        for t in [keys, queries, *w.values()]:
            t.grad = None
        loss.backward()

    times = []
    for rep in range(a.warmup + a.reps):
        t0 = time.perf_counter()
        step()
        sync()
        if rep >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    name = f"attn-{a.score}-b{a.batch}-tq{a.queries}-s{a.steps}-h{a.hidden}-o{a.output}" + ("-varlen" if a.varlen else "")
    print(json.dumps({"impl": f"pytorch-{a.device}", "config": name, "threads": a.threads, "median_ms": statistics.median(times),
                      "torch": torch.__version__}))


def main(argv=None):
    a = parse(argv)
    if a.peer:
        return peer(a)
    ours = a.bin
    if ours is None:
        features = ["--features", "cuda"] if a.device == "cuda" else []
        subprocess.run(["cargo", "build", "--release", "--example", "attention_bench"] + features, cwd=ROOT, check=True)
        ours = OURS
    flags = ["--score", a.score, "--warmup", str(a.warmup)] + [x for n in SIZES for x in ("--" + n, str(getattr(a, n)))]
    flags += ["--varlen"] if a.varlen else []
    ours_flags = ["--alloc"] if a.alloc else []
    peer_name = f"pytorch-{a.device}"
    runs = {"ours": [ours, "--backend", a.device] + flags + ours_flags,
            peer_name: [sys.executable, os.path.abspath(__file__), "--peer", "--device", a.device] + flags}
    times = {k: [] for k in runs}
    config = None
    for r in range(a.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(list(runs)))
        for name in order:
            out = subprocess.run(runs[name], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            line = json.loads(out)
            config = line["config"]
            times[name].append(line["median_ms"])
            print(out, file=sys.stderr)
    ours, torch_ms = statistics.median(times["ours"]), statistics.median(times[peer_name])
    print(f"| config | threads | ours (ms) | PyTorch {a.device.upper()} (ms) | PyTorch / ours |")
    print(f"| --- | ---: | ---: | ---: | ---: |")
    print(f"| {config} | {a.threads} | {ours:.2f} | {torch_ms:.2f} | {torch_ms / ours:.2f} |")


if __name__ == "__main__":
    main()
