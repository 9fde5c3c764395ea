#!/usr/bin/env python3
"""Trains the same character-level language model with torch.nn.LSTM and with
rnn_kernels.torch.LSTM, step for step, and compares their step times and losses.

    pip install torch matplotlib            # and the rnn_kernels package (maturin develop)
    python3 python/examples/train_lstm.py --steps 300 --threads 2 --plot docs/python_train_lstm.png

The model: an embedding, a 2-layer LSTM (hidden 512, batch-first), a linear head, Adam; next-
character prediction on data/tinyshakespeare.txt (a synthetic text where that file is missing),
batches of 64 sequences of 100 characters. Both models start from the same weights
(load_state_dict), run on the same number of threads (torch.set_num_threads; the rnn_kernels
module follows it) and see the same batches; their steps alternate (which model goes first
alternates too), so both see the same machine. A step is forward, backward and the optimiser
step of the whole model. Prints each model's median step time and their ratio, the largest
difference between the two losses, and writes both loss curves into one PNG (--plot).
"""

import argparse
import math
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

import rnn_kernels.torch as rkt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_text(path, size):
    """The training text as character ids and the vocabulary (a synthetic text without the file)."""
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        source = os.path.relpath(path, ROOT) if path.startswith(ROOT) else path
    else:
        # Words of a small random vocabulary in a random order: something with structure to learn.
        g = torch.Generator().manual_seed(0)
        letters = "abcdefghijklmnopqrstuvwxyz"
        words = ["".join(letters[i] for i in torch.randint(0, 26, (int(n),), generator=g)) for n in torch.randint(2, 8, (300,), generator=g)]
        picks = torch.randint(0, len(words), (size // 5,), generator=g)
        text = " ".join(words[i] for i in picks)
        source = f"synthetic ({path} not found)"
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    return ids, vocab, source


class CharLM(nn.Module):
    def __init__(self, lstm_cls, vocab, embed, hidden, layers):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.rnn = lstm_cls(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids):
        return self.head(self.rnn(self.embedding(ids))[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="training steps of each model (default 200)")
    ap.add_argument("--threads", type=int, default=None, help="threads of both models (default: torch's, the cores)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=100, help="characters per sequence")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--embed", type=int, default=512, help="embedding size (the LSTM's input size)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=2, help="first steps of each model left out of the medians")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "tinyshakespeare.txt"))
    ap.add_argument("--plot", default=None, help="write both loss curves to this PNG (needs matplotlib)")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    ids, vocab, source = load_text(args.data, 1 << 20)
    torch.manual_seed(args.seed)
    theirs = CharLM(nn.LSTM, len(vocab), args.embed, args.hidden, args.layers)
    ours = CharLM(rkt.LSTM, len(vocab), args.embed, args.hidden, args.layers)
    ours.load_state_dict(theirs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(theirs.state_dict().values(), ours.state_dict().values()))
    models = {"torch.nn.LSTM": theirs, "rnn_kernels.torch.LSTM": ours}
    opts = {name: torch.optim.Adam(m.parameters(), lr=args.lr) for name, m in models.items()}
    times = {name: [] for name in models}
    losses = {name: [] for name in models}
    loss_fn = nn.CrossEntropyLoss()

    print(f"{cpu_model()}, {threads} thread(s), torch {torch.__version__}, Python {platform.python_version()}")
    print(f"data: {source}, {len(ids)} characters, vocabulary {len(vocab)}")
    print(
        f"model: embedding {args.embed}, LSTM {args.layers} layers hidden {args.hidden} (batch-first), linear head, Adam lr {args.lr}; "
        f"batch {args.batch} x {args.seq} characters, {args.steps} steps each, alternating"
    )
    g = torch.Generator().manual_seed(args.seed + 1)
    names = list(models)
    for step in range(args.steps):
        starts = torch.randint(0, len(ids) - args.seq - 1, (args.batch,), generator=g)
        rows = starts[:, None] + torch.arange(args.seq + 1)
        batch = ids[rows]
        x, y = batch[:, :-1], batch[:, 1:]
        for name in names if step % 2 == 0 else names[::-1]:
            model, opt = models[name], opts[name]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
            loss.backward()
            opt.step()
            times[name].append(time.perf_counter() - t0)
            losses[name].append(loss.item())
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            line = ", ".join(f"{n} {losses[n][-1]:.4f} ({times[n][-1] * 1e3:.0f} ms)" for n in names)
            print(f"step {step:4d}: loss {line}", flush=True)

    med = {n: statistics.median(times[n][args.warmup :] or times[n]) for n in names}
    diffs = [abs(a - b) for a, b in zip(*(losses[n] for n in names))]
    print()
    for n in names:
        print(f"{n:24s} median step {med[n] * 1e3:8.1f} ms  (forward + backward + Adam, {len(times[n]) - args.warmup} steps)")
    print(f"torch.nn.LSTM / rnn_kernels.torch.LSTM step time: {med[names[0]] / med[names[1]]:.2f}x")
    print(f"largest loss difference over the {args.steps} steps: {max(diffs):.2e} (final losses {losses[names[0]][-1]:.4f}, {losses[names[1]][-1]:.4f})")
    plan = ours.rnn._models[0][0]
    print(
        f"rnn_kernels.torch.LSTM repacked its weights {ours.rnn._refreshes} times (one per optimiser step after the first), "
        f"{plan.plan_generation} of them into a new plan (copy on write)"
    )

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax, dax) = plt.subplots(2, 1, figsize=(8, 6), dpi=120, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        steps = range(1, args.steps + 1)
        for n, style in zip(names, ("-", "--")):
            ax.plot(steps, losses[n], style, label=f"{n}: median step {med[n] * 1e3:.0f} ms")
        ax.set_ylabel("cross-entropy (nats per character)")
        ax.set_title(
            f"{args.layers}-layer LSTM {args.hidden}, batch {args.batch}x{args.seq}, {source.split(' ')[0]}, Adam\n"
            f"{cpu_model()}, {threads} thread(s), torch {torch.__version__.split('+')[0]}",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        ax.legend()
        dax.semilogy(steps, [max(d, 1e-9) for d in diffs], color="gray")
        dax.set_xlabel("step")
        dax.set_ylabel("|loss difference|\n(0 drawn at 1e-9)", fontsize=8)
        dax.grid(alpha=0.3)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig.savefig(args.plot)
        print(f"plot: {args.plot}")
    return 0 if all(math.isfinite(v) for n in names for v in losses[n]) else 1


if __name__ == "__main__":
    sys.exit(main())
