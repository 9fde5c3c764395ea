"""rnn_kernels.torch.LSTM under DistributedDataParallel (gloo, two processes on 127.0.0.1): a few
SGD steps on the two halves of each batch end at the weights of one process training on the
whole batch (mean loss), in float64 (reference backend) and float32 (cpu backend)."""

import os
import socket
import sys

import pytest

torch = pytest.importorskip("torch", reason="torch is missing; pip install torch to run the PyTorch layer's tests")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402

import rnn_kernels.torch as rkt  # noqa: E402

I, H, T, B, STEPS = 6, 8, 7, 8, 3
WORLD = 2
CASES = [(torch.float64, "reference", dict(atol=1e-10, rtol=1e-10)), (torch.float32, "cpu", dict(atol=2e-6, rtol=2e-5))]


class Net(nn.Module):
    def __init__(self, dtype, backend):
        super().__init__()
        self.rnn = rkt.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=dtype, backend=backend, threads=1)
        self.head = nn.Linear(2 * H, 2, dtype=dtype)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def data(dtype):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(B, T, I, generator=g, dtype=torch.float64).to(dtype) for _ in range(STEPS)]
    ys = [torch.randn(B, T, 2, generator=g, dtype=torch.float64).to(dtype) for _ in range(STEPS)]
    return xs, ys


def initial_state(dtype, backend):
    torch.manual_seed(42)
    return Net(dtype, backend).state_dict()


def train(model, xs, ys, rows):
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    for x, y in zip(xs, ys):
        opt.zero_grad()
        nn.functional.mse_loss(model(x[rows]), y[rows]).backward()
        opt.step()


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        half = B // WORLD
        for dtype, backend, _ in CASES:
            # Rank 1 starts from other weights: DDP broadcasts rank 0's into the flat weight
            # tensor's views, which the module must see.
            torch.manual_seed(1000 + rank)
            model = Net(dtype, backend)
            if rank == 0:
                model.load_state_dict(initial_state(dtype, backend))
            xs, ys = data(dtype)
            with torch.no_grad():
                model(xs[0])  # the native model made with this rank's own weights
            ddp = nn.parallel.DistributedDataParallel(model)
            train(ddp, xs, ys, slice(rank * half, (rank + 1) * half))
            torch.save(model.state_dict(), os.path.join(out_dir, f"{dtype}-{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's finalisation: with torch 2.15, gloo's worker threads can
    # still be alive when the C++ static destructors run, and the process then aborts after its
    # work is done ("terminate called without an active exception", SIGABRT, about one run in
    # four; torch.nn.LSTM in place of rnn_kernels.torch.LSTM aborts alike). Everything this
    # worker produces is in the files saved above, which are closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_one_process(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for dtype, backend, tol in CASES:
        model = Net(dtype, backend)
        model.load_state_dict(initial_state(dtype, backend))
        xs, ys = data(dtype)
        train(model, xs, ys, slice(0, B))
        assert model.rnn._refreshes == STEPS - 1
        expected = model.state_dict()
        for rank in range(WORLD):
            got = torch.load(os.path.join(tmp_path, f"{dtype}-{rank}.pt"))
            assert list(got) == list(expected)
            for k in expected:
                torch.testing.assert_close(got[k], expected[k], **tol, msg=lambda m, k=k, r=rank: f"rank {r}, {k}: {m}")
