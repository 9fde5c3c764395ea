"""What a training step of the attention saves by keeping its forward pass: forward + backward
(the backward recomputes the forward) against forward_training + backward(saved=...), Tq = 20
queries, S = 50 keys (lengths 50 down to 25), B = 32, Hq = Hk = A = O = 256, float32, the CPU
backend, 2 threads, the gradient w.r.t. the attentional hidden state; the memory is made once
outside the timings. The two variants alternate step by step (STEPS of each, after a warm-up),
so that a change of the machine's load hits both; the ratio is of the medians, and of the
minima (the least disturbed steps).

    python3 python/examples/attention_saved_cost.py [score ...]   # default: general additive
"""

import sys
import time

import numpy as np
import rnn_kernels as rk

TQ, S, B, H = 20, 50, 32, 256
STEPS = 101


def timed(f):
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1e3


def med(ts):
    return sorted(ts)[len(ts) // 2]


for score in sys.argv[1:] or ["general", "additive"]:
    cfg = rk.AttentionConfig(score, H, H, attn_size=H if score in ("concat", "additive") else None, output_size=H)
    r = np.random.default_rng(0)
    att = rk.Attention(cfg, r.uniform(-0.06, 0.06, cfg.param_count).astype(np.float32), backend="cpu", threads=2)
    keys = r.standard_normal((S, B, H)).astype(np.float32)
    queries = r.standard_normal((TQ, B, H)).astype(np.float32)
    dh = r.standard_normal((TQ, B, H)).astype(np.float32)
    mem = att.memory(keys, np.linspace(S, S // 2, B).astype(int))

    def recompute():
        att.forward(mem, queries)
        return att.backward(mem, queries, d_hidden=dh)

    def saved():
        *_, s = att.forward_training(mem, queries)
        return att.backward(mem, queries, d_hidden=dh, saved=s)

    for a, b in zip(recompute(), saved()):
        assert np.array_equal(a, b)
    for _ in range(5):
        recompute(), saved()
    t_re, t_sv, t_f, t_ft = [], [], [], []
    for _ in range(STEPS):
        t_re.append(timed(recompute))
        t_sv.append(timed(saved))
        t_f.append(timed(lambda: att.forward(mem, queries)))
        t_ft.append(timed(lambda: att.forward_training(mem, queries)))
    nbytes = att.forward_training(mem, queries)[3].nbytes
    print(
        f"{score}: forward+backward median {med(t_re):.2f} ms (min {min(t_re):.2f}), "
        f"forward_training+backward(saved) median {med(t_sv):.2f} ms (min {min(t_sv):.2f}): "
        f"ratio of medians {med(t_re) / med(t_sv):.3f}, of minima {min(t_re) / min(t_sv):.3f}; "
        f"alone: forward median {med(t_f):.2f} ms (min {min(t_f):.2f}), "
        f"forward_training {med(t_ft):.2f} ms (min {min(t_ft):.2f}), saved.nbytes {nbytes}"
    )
