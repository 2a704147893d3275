"""Data loading and numpy logistic regression shared by the ServerApp and ClientApp."""

from functools import lru_cache
from pathlib import Path

import numpy as np

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")
N_FEATURES = 30
BATCH_SIZE = 16
LEARNING_RATE = 0.1
L2 = 0.05


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    return raw[:, :N_FEATURES], raw[:, N_FEATURES]


def _split(x: np.ndarray, y: np.ndarray):
    test = np.arange(len(y)) % 5 == 0  # every fifth row is held out
    return x[~test], y[~test], x[test], y[test]


@lru_cache(maxsize=None)
def load_partition(data_dir: str, partition_id: int):
    """Return (x_train, y_train, x_test, y_test) for one hospital, standardised.

    Mean/std are taken over the union of the three hospitals' training rows.
    A real federation could not do this without sharing statistics; it is
    acceptable here because this app is only a timing anchor.
    """
    parts = [_split(*_read(Path(data_dir) / f"{h}.csv")) for h in HOSPITALS]
    union = np.concatenate([p[0] for p in parts])
    mean, std = union.mean(axis=0), union.std(axis=0)
    std[std == 0] = 1.0
    x_tr, y_tr, x_te, y_te = parts[partition_id]
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


def initial_params() -> list[np.ndarray]:
    return [np.zeros(N_FEATURES), np.zeros(1)]  # 30 weights + bias = 31 parameters


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def train_one_epoch(params, x, y, seed: int) -> list[np.ndarray]:
    """One epoch of mini-batch SGD on L2-regularised logistic loss."""
    w, b = params[0].copy(), float(params[1][0])
    order = np.random.default_rng(seed).permutation(len(y))
    for start in range(0, len(y), BATCH_SIZE):
        idx = order[start : start + BATCH_SIZE]
        err = _sigmoid(x[idx] @ w + b) - y[idx]
        w -= LEARNING_RATE * (x[idx].T @ err / len(idx) + L2 * w)
        b -= LEARNING_RATE * err.mean()
    return [w, np.array([b])]


def evaluate(params, x, y) -> tuple[float, float]:
    """Mean log-loss and accuracy."""
    p = _sigmoid(x @ params[0] + params[1][0])
    eps = 1e-12
    loss = -np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
    acc = np.mean((p >= 0.5) == (y == 1))
    return float(loss), float(acc)
