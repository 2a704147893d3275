#!/usr/bin/env python3
"""Checks veil's RDP accountant (crates/learning/src/rdp.rs) against Google's dp-accounting.

Reads the accountant's figures as JSON lines on standard input (from
`cargo run -q -p veil-learning --example rdp_grid`), computes the same (q, sigma, steps, delta)
with dp-accounting's RdpAccountant on the same orders, and fails unless every epsilon agrees
to three significant digits (relative difference below 5e-4, or both below 1e-9).
"""
import json
import sys

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant

ORDERS = list(range(2, 64)) + [128, 256, 512, 1024]


def reference(q, sigma, steps, delta):
    accountant = rdp_privacy_accountant.RdpAccountant(orders=ORDERS)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(event, steps)
    return accountant.get_epsilon(delta)


def main():
    rows = [json.loads(line) for line in sys.stdin if line.strip()]
    if not rows:
        print("no figures on standard input", file=sys.stderr)
        return 1
    worst, failures = 0.0, []
    for r in rows:
        ours = r["epsilon"]
        theirs = reference(r["q"], r["sigma"], r["steps"], r["delta"])
        if abs(ours) < 1e-9 and abs(theirs) < 1e-9:
            continue
        relative = abs(ours - theirs) / max(abs(theirs), 1e-12)
        worst = max(worst, relative)
        if relative >= 5e-4:
            failures.append((r, theirs))
    for r, theirs in failures:
        print(f"q={r['q']} sigma={r['sigma']} steps={r['steps']}: veil {r['epsilon']:.6g}, "
              f"dp-accounting {theirs:.6g}", file=sys.stderr)
    print(f"{len(rows)} (q, sigma, steps) points; largest relative difference {worst:.2e}; "
          f"{len(failures)} beyond 5e-4")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
