"""A veil trainer program: logistic regression with NumPy.

veil runs this once per round at each party, confined (no network; it may read its rows and
write its working directory only). It reads one JSON object from standard input:

    {"protocol": "veil-trainer/1", "round": 0, "rounds": 20, "seed": 7,
     "parameters": [...], "rows": "rows.csv", "features": [...], "label": "target",
     "local": {"epochs": 1, "batch_size": 16, "learning_rate": 0.1, "l2": 0.05, ...}}

and writes one to standard output: {"update": [...]}, its new parameters minus the ones it
was given, as many values. The parameters are the weights, one per feature in the order of
"features", then the bias: the layout of veil's built-in logistic regression, so the model
file veil writes scores with `veil predict` like any other.

The rows file has a header (the features, then the label) and one row per training example,
already encoded and standardised by the job.
"""

import json
import sys

import numpy as np


def main() -> int:
    job = json.loads(sys.stdin.readline())
    if job.get("protocol") != "veil-trainer/1":
        print(f"unknown protocol {job.get('protocol')!r}", file=sys.stderr)
        return 2
    start = np.asarray(job["parameters"], dtype=np.float64)
    data = np.loadtxt(job["rows"], delimiter=",", skiprows=1, ndmin=2)
    x, y = data[:, :-1], data[:, -1]
    if start.shape != (x.shape[1] + 1,):
        print(f"{start.size} parameters for {x.shape[1]} features", file=sys.stderr)
        return 2
    local = job["local"]
    rate, batch, l2 = local["learning_rate"], local["batch_size"], local.get("l2", 0.0)
    # The same batch order at every repetition of this round at this party.
    rng = np.random.default_rng([job["seed"], job["round"]])
    weights, bias = start[:-1].copy(), float(start[-1])
    for _ in range(local["epochs"]):
        order = rng.permutation(len(y))
        for at in range(0, len(y), batch):
            b = order[at : at + batch]
            p = 1.0 / (1.0 + np.exp(-(x[b] @ weights + bias)))
            g = p - y[b]
            weights -= rate * (x[b].T @ g / len(b) + l2 * weights)
            bias -= rate * (g.mean() + l2 * bias)
    update = np.concatenate([weights, [bias]]) - start
    json.dump({"update": update.tolist()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
