#!/usr/bin/env python3
"""rnn-kernels from Python through the C ABI (ctypes), compared with torch.nn.LSTM.

    cargo build --release -p rnn-kernels-capi
    python3 examples/python/capi_lstm.py [--lib PATH] [--backend cpu|reference] [--threads N]
    cargo build --release -p rnn-kernels-capi --features cuda
    python3 examples/python/capi_lstm.py --backend cuda --device

Runs a 2-layer bidirectional LSTM on a variable-length batch, forward (inference and training)
and backward, and, when torch is installed, compares every output and gradient with
torch.nn.LSTM on a packed sequence with the same parameters (the flat parameter buffer is the
state_dict() tensors in order). Needs numpy. Not part of `cargo test`.

With --device (backend cuda, torch with CUDA) it runs the same calls again through the
*_device functions on torch CUDA tensors (their data_ptr()), ordered on torch's current
stream, and checks that they give the same bits as the host-pointer calls.
"""
import argparse
import ctypes as C
import os
import sys

import numpy as np

F32P = C.POINTER(C.c_float)
I64P = C.POINTER(C.c_int64)
SZ = C.c_size_t


def find_lib(explicit):
    if explicit:
        return explicit
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    return os.path.join(target, "release", "librnn_kernels.so")


class RnnKernels:
    """The few functions of include/rnn_kernels.h this example uses, with argtypes."""

    def __init__(self, path):
        lib = C.CDLL(path)
        lib.rnnk_last_error.restype = C.c_char_p
        lib.rnnk_version.restype = C.c_char_p
        lib.rnnk_model_create.argtypes = [C.c_char_p, SZ, SZ, SZ, C.c_int, SZ, C.c_int, C.c_char_p, SZ, C.POINTER(C.c_void_p)]
        lib.rnnk_model_free.argtypes = [C.c_void_p]
        lib.rnnk_model_param_count.argtypes = [C.c_void_p, C.POINTER(SZ)]
        lib.rnnk_model_set_params.argtypes = [C.c_void_p, F32P, SZ]
        lib.rnnk_reserve_create.argtypes = [C.POINTER(C.c_void_p)]
        lib.rnnk_reserve_free.argtypes = [C.c_void_p]
        fwd = [SZ, SZ, I64P, SZ, F32P, SZ, F32P, SZ, F32P, SZ, F32P, SZ, F32P, SZ, F32P, SZ]
        lib.rnnk_forward.argtypes = [C.c_void_p] + fwd
        lib.rnnk_forward_training.argtypes = [C.c_void_p, C.c_void_p] + fwd
        lib.rnnk_backward.argtypes = [C.c_void_p, C.c_void_p] + [F32P, SZ] * 7 + [C.c_int]
        # The *_device functions: device pointers as integers (torch's data_ptr()), and a stream.
        dev = [SZ, SZ, I64P, SZ] + [C.c_void_p, SZ] * 6 + [C.c_void_p]
        lib.rnnk_forward_device.argtypes = [C.c_void_p] + dev
        lib.rnnk_forward_training_device.argtypes = [C.c_void_p, C.c_void_p] + dev
        lib.rnnk_backward_device.argtypes = [C.c_void_p, C.c_void_p] + [C.c_void_p, SZ] * 7 + [C.c_int, C.c_void_p]
        self.lib = lib

    def __call__(self, name, *args):
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise RuntimeError(f"{name}: status {status}: {self.lib.rnnk_last_error().decode()}")


def buf(a):
    """(pointer, length in elements) of a float32 array, or (NULL, 0) for None."""
    if a is None:
        return None, 0
    assert a.dtype == np.float32 and a.flags["C_CONTIGUOUS"]
    return a.ctypes.data_as(F32P), a.size


def dbuf(t):
    """(device address, length in elements) of a contiguous float32 torch CUDA tensor, or (None, 0)."""
    if t is None:
        return None, 0
    assert t.is_cuda and t.dtype.is_floating_point and t.element_size() == 4 and t.is_contiguous()
    return t.data_ptr(), t.numel()


def check_device(rk, model, lens, B, T, x, h0, c0, dy, host):
    """The *_device functions on torch CUDA tensors, on torch's current stream, against `host`."""
    import torch

    stream = C.c_void_p(torch.cuda.current_stream().cuda_stream)
    cu = lambda a: torch.from_numpy(a).cuda()
    xd, h0d, c0d, dyd = cu(x), cu(h0), cu(c0), cu(dy)
    yd, hnd, cnd = (torch.empty(a.shape, device="cuda") for a in (host["y"], host["hn"], host["cn"]))
    # torch's copies above are on the current stream; the library waits for them, and torch's
    # later work on that stream (the .cpu() below) waits for the library.
    rk("rnnk_forward_device", model, T, B, lens, B, *dbuf(xd), *dbuf(h0d), *dbuf(c0d), *dbuf(yd), *dbuf(hnd), *dbuf(cnd), stream)
    same = {"y (inference)": np.array_equal(yd.cpu().numpy(), host["y"])}
    reserve = C.c_void_p()
    rk("rnnk_reserve_create", C.byref(reserve))
    rk("rnnk_forward_training_device", model, reserve, T, B, lens, B, *dbuf(xd), *dbuf(h0d), *dbuf(c0d), *dbuf(yd), *dbuf(hnd),
       *dbuf(cnd), stream)
    dxd, dh0d, dc0d = torch.empty_like(xd), torch.empty_like(h0d), torch.empty_like(c0d)
    dpd = torch.empty(host["dparams"].shape, device="cuda")
    rk("rnnk_backward_device", model, reserve, *dbuf(dyd), *dbuf(None), *dbuf(None), *dbuf(dxd), *dbuf(dh0d), *dbuf(dc0d),
       *dbuf(dpd), 0, stream)
    rk("rnnk_reserve_free", reserve)
    for name, t in [("y", yd), ("hn", hnd), ("cn", cnd), ("dx", dxd), ("dh0", dh0d), ("dc0", dc0d), ("dparams", dpd)]:
        same[name] = np.array_equal(t.cpu().numpy(), host[name])
    for name, ok in same.items():
        print(f"  device pointers, {name:14s} {'bit-identical to the host call' if ok else 'DIFFERS from the host call'}")
    return all(same.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", help="path of librnn_kernels.so (default: $CARGO_TARGET_DIR or target, release)")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", action="store_true", help="also the *_device functions on torch CUDA tensors (backend cuda)")
    args = ap.parse_args()
    if args.device and args.backend != "cuda":
        ap.error("--device needs --backend cuda")

    rk = RnnKernels(find_lib(args.lib))
    I, H, L, T = 8, 16, 2, 7
    lengths = np.array([7, 3, 5, 1], dtype=np.int64)  # any order
    B, D = len(lengths), 2
    print(f"rnn-kernels {rk.lib.rnnk_version().decode()} via ctypes, backend {args.backend}")

    model = C.c_void_p()
    rk("rnnk_model_create", b"lstm", I, H, L, 1, 0, 1, args.backend.encode(), args.threads, C.byref(model))
    count = SZ()
    rk("rnnk_model_param_count", model, C.byref(count))

    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    if torch is not None:
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(I, H, num_layers=L, bidirectional=True)
        # The flat layout is the state_dict() tensors in order.
        params = np.concatenate([t.detach().numpy().ravel() for t in lstm.state_dict().values()]).astype(np.float32)
    else:
        params = rng.uniform(-0.25, 0.25, count.value).astype(np.float32)
    assert params.size == count.value, (params.size, count.value)
    rk("rnnk_model_set_params", model, *buf(params))

    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((L * D, B, H)).astype(np.float32)
    c0 = rng.standard_normal((L * D, B, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, D * H)).astype(np.float32)
    for b, n in enumerate(lengths):
        dy[n:, b] = 0.0  # past a length the output is a constant zero
    y, hn, cn = (np.zeros(s, np.float32) for s in [(T, B, D * H), (L * D, B, H), (L * D, B, H)])
    lens = lengths.ctypes.data_as(I64P)

    rk("rnnk_forward", model, T, B, lens, B, *buf(x), *buf(h0), *buf(c0), *buf(y), *buf(hn), *buf(cn))
    y_inf = y.copy()
    reserve = C.c_void_p()
    rk("rnnk_reserve_create", C.byref(reserve))
    rk("rnnk_forward_training", model, reserve, T, B, lens, B, *buf(x), *buf(h0), *buf(c0), *buf(y), *buf(hn), *buf(cn))
    assert np.array_equal(y, y_inf), "training forward differs from inference"
    dx, dh0, dc0 = np.zeros_like(x), np.zeros_like(h0), np.zeros_like(c0)
    dparams = np.zeros_like(params)
    rk("rnnk_backward", model, reserve, *buf(dy), *buf(None), *buf(None), *buf(dx), *buf(dh0), *buf(dc0), *buf(dparams), 0)
    print(f"y {y.shape}, hn {hn.shape}, cn {cn.shape}; dx {dx.shape}, dparams {dparams.shape}")

    # Errors come back as a status and a message naming the argument:
    st = rk.lib.rnnk_forward(model, T, B, lens, B, x.ctypes.data_as(F32P), x.size - 1, None, 0, None, 0,
                             y.ctypes.data_as(F32P), y.size, None, 0, None, 0)
    print(f"a short x: status {st}: {rk.lib.rnnk_last_error().decode()}")
    device_ok = True
    if args.device:
        host = {"y": y, "hn": hn, "cn": cn, "dx": dx, "dh0": dh0, "dc0": dc0, "dparams": dparams}
        device_ok = check_device(rk, model, lens, B, T, x, h0, c0, dy, host)

    rk("rnnk_reserve_free", reserve)
    rk("rnnk_model_free", model)

    if torch is None:
        print("torch is not installed: no comparison")
        return 0 if device_ok else 1
    xt = torch.tensor(x, requires_grad=True)
    h0t, c0t = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
    out, (hnt, cnt) = lstm(packed, (h0t, c0t))
    yt, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    (yt * torch.tensor(dy)).sum().backward()
    grads = np.concatenate([p.grad.numpy().ravel() for p in lstm.parameters()])
    worst = 0.0
    for name, ours, theirs in [("y", y, yt), ("hn", hn, hnt), ("cn", cn, cnt), ("dx", dx, xt.grad), ("dh0", dh0, h0t.grad),
                               ("dc0", dc0, c0t.grad), ("dparams", dparams, grads)]:
        theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
        err = float(np.max(np.abs(ours - theirs)))
        worst = max(worst, err)
        print(f"  {name:8s} max |ours - torch| = {err:.3e}")
    ok = worst < 1e-4
    print(f"max abs difference against torch {torch.__version__}: {worst:.3e} ({'ok' if ok else 'FAIL'}, tolerance 1e-4)")
    return 0 if ok and device_ok else 1


if __name__ == "__main__":
    sys.exit(main())
