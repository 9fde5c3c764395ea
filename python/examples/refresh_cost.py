"""The cost of refreshing a model's packed weights after an optimiser step (Model.update_params,
in place) against building a new Model, for a 2-layer bidirectional LSTM I = H = 512 (10.5 M
parameters), 2 threads; the median of 21 calls each.

    python3 python/examples/refresh_cost.py   # RNN_KERNELS_ISA=scalar: without the packing
"""

import time

import numpy as np
import rnn_kernels as rk

cfg = rk.Config("lstm", 512, 512, num_layers=2, bidirectional=True)
p = np.random.default_rng(0).uniform(-0.04, 0.04, cfg.param_count).astype(np.float32)
m = rk.Model(cfg, p, threads=2)
def med(f, n=21):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[n // 2] * 1e3
print(cfg.param_count, "params, isa", m.isa)
print("update_params in place %.1f ms" % med(lambda: m.update_params(p)))
print("new Model %.1f ms" % med(lambda: rk.Model(cfg, p, threads=2)))
