#!/usr/bin/env python3
"""One training step of `examples/seq2seq.rs`'s model: rnn-kernels' CPU backend against PyTorch
CPU, side by side.

The model: source characters -> embedding (32) -> bidirectional GRU encoder (64 a direction, its
outputs the attention's keys, 128 wide) -> LSTM decoder (128), its first state the encoder's
final states, its input [target embedding (16); the previous attentional state (128)] -> Luong's
general attention over the encoder outputs, attentional state tanh(W_c [c; h]) (128) -> a linear
layer to the target characters; the mean cross-entropy over every target character, the
gradients clipped to a global norm of 5, one Adam step (lr 3e-3). Teacher forcing 1.

Ours is `target/release/examples/seq2seq --bench-steps N` (built here once): whole steps on one
fixed batch, the first `--batch` training dates of `rnn_kernels_nn::dates` (seed 1). The peer is
this script with `--peer`: it asks the example for that batch and its untrained parameters
(`seq2seq --dump-batch FILE --save FILE`), builds the same model as a PyTorch user writes it
(`nn.Embedding`, `nn.GRU(bidirectional=True)` over `pack_padded_sequence`, `nn.LSTMCell` step by
step, `bmm` + a `masked_fill` softmax, `F.cross_entropy`, autograd, `clip_grad_norm_`,
`torch.optim.Adam`), float32, `torch.set_num_threads(threads)`, and times the same steps. Both
start from the same parameters, so both print the first step's loss (`first_loss`): the two
must agree to about 1e-4, a check that they compute the same thing. Each run is a subprocess; per
round both run once, in an order that alternates, and a cell of the table is the median over
rounds of each run's median time. `benches/compare.py --configs seq2seq` runs this row beside
the attention row of `benches/attention.py`.

Usage:
    python3 benches/seq2seq.py [--batch 64] [--threads 2] [--rounds 5] [--reps 10] [--warmup 2]
    python3 benches/seq2seq.py --peer [--batch 64] [--threads 2] [--reps 10] [--warmup 2]
"""

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, "target", "release", "examples", "seq2seq")

# The example's sizes.
SRC_EMB, ENC_H, TGT_EMB, DEC_H, ATT_O = 32, 64, 16, 128, 128


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=10, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per run first")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--peer", action="store_true", help="run the PyTorch peer once and print its JSON line")
    return p.parse_args(argv)


def ours_cmd(a):
    """The example's command line for `a`'s sizes, timing `a.reps` steps."""
    return [OURS, "--bench-steps", str(a.reps), "--bench-warmup", str(a.warmup), "--batch", str(a.batch),
            "--threads", str(a.threads), "--seed", str(a.seed)]


def read_safetensors(path):
    """The float32 tensors of a safetensors file, flat, by name (no safetensors package needed)."""
    import torch

    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        assert v["dtype"] == "F32", (name, v["dtype"])
        lo, hi = v["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[8 + n + lo:8 + n + hi]), dtype=torch.float32)
    return out


def peer(a):
    import time

    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        bfile, wfile = os.path.join(tmp, "batch.json"), os.path.join(tmp, "model.safetensors")
        subprocess.run([OURS, "--dump-batch", bfile, "--save", wfile, "--batch", str(a.batch), "--seed", str(a.seed)],
                       check=True, stdout=subprocess.DEVNULL)
        with open(bfile) as f:
            batch = json.load(f)
        saved = read_safetensors(wfile)
    assert batch["attention"] == "general", batch["attention"]
    n_src, n_tgt, b = batch["n_src"], batch["n_tgt"], len(batch["src"])
    lens = torch.tensor([len(s) for s in batch["src"]])
    s_max = int(lens.max())
    src = torch.zeros(s_max, b, dtype=torch.long)  # time-major, padded with 0
    for r, ids in enumerate(batch["src"]):
        src[:len(ids), r] = torch.tensor(ids)
    tgt = torch.tensor(batch["tgt"]).T.contiguous()  # [T, B], the end token last
    t_dec = tgt.shape[0]
    pad = torch.arange(s_max)[None, :] >= lens[:, None]  # [B, S]

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.src_emb = nn.Embedding(n_src, SRC_EMB)
            self.encoder = nn.GRU(SRC_EMB, ENC_H, bidirectional=True)
            self.tgt_emb = nn.Embedding(n_tgt, TGT_EMB)
            self.decoder = nn.LSTMCell(TGT_EMB + ATT_O, DEC_H)
            self.weight_a = nn.Parameter(torch.empty(DEC_H, 2 * ENC_H))
            self.weight_c = nn.Parameter(torch.empty(ATT_O, 2 * ENC_H + DEC_H))
            self.out = nn.Linear(ATT_O, n_tgt)

        def forward(self):
            y, hn = self.encoder(pack_padded_sequence(self.src_emb(src), lens, enforce_sorted=False))
            keys = pad_packed_sequence(y, total_length=s_max)[0].transpose(0, 1)  # [B, S, 2·ENC_H]
            memory = keys @ self.weight_a.T  # the keys' side of the score, once
            h, c = torch.cat([hn[0], hn[1]], dim=-1), torch.zeros(b, DEC_H)
            feed, prev = torch.zeros(b, ATT_O), torch.zeros(b, dtype=torch.long)
            logits = []
            for t in range(t_dec):
                h, c = self.decoder(torch.cat([self.tgt_emb(prev), feed], dim=-1), (h, c))
                e = torch.bmm(memory, h[:, :, None])[:, :, 0]
                alpha = torch.softmax(e.masked_fill(pad, float("-inf")), dim=-1)
                context = torch.bmm(alpha[:, None, :], keys)[:, 0, :]
                feed = torch.tanh(torch.cat([context, h], dim=-1) @ self.weight_c.T)
                logits.append(self.out(feed))
                prev = tgt[t]
            return F.cross_entropy(torch.stack(logits).reshape(-1, n_tgt), tgt.reshape(-1))

    model = Seq2Seq()
    names = {"weight_a": "attention.weight_a", "weight_c": "attention.weight_c"}
    with torch.no_grad():
        for name, p in model.named_parameters():
            # nn.LSTMCell's weight_ih is the one-layer nn.LSTM's weight_ih_l0, the checkpoint's name.
            key = names.get(name) or (name + "_l0" if name.startswith("decoder.") else name)
            p.copy_(saved[key].reshape(p.shape))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss.item()

    times, first_loss = [], None
    for rep in range(a.warmup + a.reps):
        t0 = time.perf_counter()
        loss = step()
        if rep >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
        if first_loss is None:
            first_loss = loss
    print(json.dumps({"impl": "pytorch-cpu", "config": batch["config"], "threads": a.threads,
                      "median_ms": statistics.median(times), "first_loss": round(first_loss, 6),
                      "torch": torch.__version__}))


def main(argv=None):
    a = parse(argv)
    if a.peer:
        return peer(a)
    subprocess.run(["cargo", "build", "--release", "--example", "seq2seq"], cwd=ROOT, check=True)
    runs = {"ours": ours_cmd(a), "pytorch-cpu": [sys.executable, os.path.abspath(__file__), "--peer"]
            + [x for n in ("batch", "threads", "reps", "warmup", "seed") for x in ("--" + n, str(getattr(a, n)))]}
    times, loss = {k: [] for k in runs}, {}
    config = None
    for r in range(a.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(list(runs)))
        for name in order:
            out = subprocess.run(runs[name], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            line = json.loads(out)
            config = line["config"]
            times[name].append(line["median_ms"])
            loss[name] = line["first_loss"]
            print(out, file=sys.stderr)
    if abs(loss["ours"] - loss["pytorch-cpu"]) > 1e-3:
        print(f"seq2seq.py: warning: the first step's losses differ: ours {loss['ours']}, "
              f"PyTorch {loss['pytorch-cpu']}", file=sys.stderr)
    ours, torch_ms = statistics.median(times["ours"]), statistics.median(times["pytorch-cpu"])
    print("| config | threads | ours (ms) | PyTorch CPU (ms) | PyTorch / ours | first loss (ours, PyTorch) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    print(f"| {config} | {a.threads} | {ours:.2f} | {torch_ms:.2f} | {torch_ms / ours:.2f} "
          f"| {loss['ours']:.4f}, {loss['pytorch-cpu']:.4f} |")


if __name__ == "__main__":
    main()
