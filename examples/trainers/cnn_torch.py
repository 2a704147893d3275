"""A veil trainer program: a small convolutional network on the 8x8 digits, with PyTorch.

The protocol is that of logistic_numpy.py: one JSON object in ({"parameters": [...],
"rows": "rows.csv", "local": {...}, "round": r, "seed": s, ...}), one out ({"update": [...]}).
The parameters are the network's, flattened in the order of its state_dict (1,898 values):
declare the job's model as { kind = "program", parameters = 1898 }.

The rows are the 64 pixels of each digit (row-major, as the digits files hold them) and the
label. veil starts every job from zeros; a network cannot learn from all-zero weights, so in
round 0 this program draws its initial weights from the job's seed, the same at every party,
and returns them (plus its first round of training) as its update.
"""

import json
import sys

import numpy as np
import torch
from torch import nn


def network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )


def main() -> int:
    job = json.loads(sys.stdin.readline())
    if job.get("protocol") != "veil-trainer/1":
        print(f"unknown protocol {job.get('protocol')!r}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    torch.manual_seed(job["seed"])
    model = network().double()
    given = torch.tensor(job["parameters"], dtype=torch.float64)
    flat = nn.utils.parameters_to_vector(model.parameters())
    if given.numel() != flat.numel():
        print(f"{given.numel()} parameters for a network of {flat.numel()}", file=sys.stderr)
        return 2
    if job["round"] > 0 or bool(given.any()):
        nn.utils.vector_to_parameters(given, model.parameters())
    start = nn.utils.parameters_to_vector(model.parameters()).detach().clone()

    data = np.loadtxt(job["rows"], delimiter=",", skiprows=1, ndmin=2)
    x = torch.tensor(data[:, :-1], dtype=torch.float64).reshape(-1, 1, 8, 8)
    y = torch.tensor(data[:, -1], dtype=torch.long)
    local = job["local"]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=local["learning_rate"], weight_decay=local.get("l2", 0.0)
    )
    generator = torch.Generator().manual_seed(job["seed"] * 100_003 + job["round"])
    for _ in range(local["epochs"]):
        order = torch.randperm(len(y), generator=generator)
        for at in range(0, len(y), local["batch_size"]):
            b = order[at : at + local["batch_size"]]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            optimizer.step()
    update = nn.utils.parameters_to_vector(model.parameters()).detach() - (
        torch.zeros_like(start) if job["round"] == 0 and not bool(given.any()) else start
    )
    json.dump({"update": update.tolist()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
