"""Opacus per-example gradient clipping throughput on one core.

The digits MLP 64-32(ReLU)-10 with softmax cross-entropy (summed over the batch), wrapped in
Opacus's GradSampleModule (hooks computing per-sample gradients) and driven by its DPOptimizer.
One timed iteration: zero_grad, forward, backward (per-sample gradients), then
DPOptimizer.clip_and_accumulate(): per-sample norms, clip factors, clipped sum. No noise is
added and no optimizer step is taken (that is the rest of DPOptimizer.pre_step() and step()).

Prints key=value lines; `examples_per_second=N` is the figure.
"""

import argparse
import copy
import csv
import time
import warnings

import torch
from torch import nn

import opacus
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer


def load(path, batch):
    """The training rows of one digits file (row index % 5 != 0), pixels / 16, repeated
    cyclically to `batch` rows."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        label = header.index("target")
        rows = [r for r in reader if r]
    train = [r for i, r in enumerate(rows) if i % 5 != 0]
    picked = [train[i % len(train)] for i in range(batch)]
    x = [[float(v) / 16.0 for j, v in enumerate(r) if j != label] for r in picked]
    y = [int(float(r[label])) for r in picked]
    return torch.tensor(x), torch.tensor(y, dtype=torch.long), len(rows), len(train)


def reference_clipped_sum(model, x, y, clip):
    """The clipped per-row gradient sum by one autograd pass per row (slow, for the check)."""
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    clipped = 0
    for i in range(len(x)):
        grads = torch.autograd.grad(loss_fn(model(x[i : i + 1]), y[i : i + 1]), params)
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        factor = min(1.0, clip / (norm.item() + 1e-6))
        clipped += factor < 1.0
        for t, g in zip(total, grads):
            t += factor * g
    return total, clipped


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=int, default=50, help="untimed iterations first")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args()

    torch.set_num_threads(1)
    # The input needs no gradient, so PyTorch notes that the first layer's full backward hook
    # fires on its output's gradient only: which is all that Opacus's hooks use.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.manual_seed(1)
    dtype = getattr(torch, args.dtype)
    x, y, rows, train_rows = load(args.csv, args.batch)
    x = x.to(dtype)

    plain = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).to(dtype)
    reference = copy.deepcopy(plain)  # unwrapped copy for the correctness check
    model = GradSampleModule(plain, batch_first=True, loss_reduction="sum")
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=args.clip,
        expected_batch_size=args.batch,
        loss_reduction="sum",
    )
    loss_fn = nn.CrossEntropyLoss(reduction="sum")

    def clipped_sum():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.clip_and_accumulate()
        return loss

    # Check once that what is timed is the clipped per-row gradient sum.
    clipped_sum()
    want, clipped = reference_clipped_sum(reference, x, y, args.clip)
    got = [p.summed_grad for p in model.parameters()]
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    err = max((g - w).abs().max().item() for g, w in zip(got, want))
    scale = max(w.abs().max().item() for w in want)
    if not err <= tol * max(1.0, scale):
        raise SystemExit(f"Opacus's clipped sum differs from the per-row loop by {err:g}")

    def timed(step):
        for _ in range(args.warmup):
            step()
        iterations = 0
        start = time.perf_counter()
        while True:
            step()
            iterations += 1
            elapsed = time.perf_counter() - start
            if elapsed >= args.seconds:
                return iterations, elapsed

    iterations, elapsed = timed(clipped_sum)
    rate = iterations * args.batch / elapsed

    # For scale only: the same forward and backward in plain PyTorch, one batch gradient, no
    # per-sample gradients and no clipping.
    def batch_gradient():
        reference.zero_grad(set_to_none=True)
        loss_fn(reference(x), y).backward()

    plain_iterations, plain_elapsed = timed(batch_gradient)

    parameters = sum(p.numel() for p in model.parameters())
    print(f"opacus_version={opacus.__version__}")
    print(f"torch_version={torch.__version__}")
    print(f"torch_threads={torch.get_num_threads()}")
    print(f"dtype={args.dtype}")
    print(f"parameters={parameters}")
    print(f"rows_in_file={rows} training_rows={train_rows} batch={args.batch}")
    print(f"clipped_in_batch={clipped} (of {args.batch}, clip {args.clip})")
    print(f"check_max_abs_diff={err:.3g}")
    print(f"iterations={iterations} seconds={elapsed:.3f}")
    print(f"ms_per_batch={elapsed / iterations * 1e3:.4f}")
    print(
        f"plain_torch_batch_gradient_examples_per_second={plain_iterations * args.batch / plain_elapsed:.0f}"
        f" (no per-sample gradients, no clipping; for scale)"
    )
    print(f"examples_per_second={rate:.0f}")


if __name__ == "__main__":
    main()
