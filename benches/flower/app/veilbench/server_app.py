"""ServerApp: FedAvg (weighted by examples) with the plain or SecAgg+ fit workflow.

Round timing: a monotonic clock is read when round k's fit workflow starts and
when round k's evaluate workflow ends; the result (per-round times, total,
final accuracy) is written as JSON to run-config `result-file`.
"""

import json
import time

from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import (
    default_evaluate_workflow,
    default_fit_workflow,
)
from flwr.serverapp import ServerApp

from veilbench.task import initial_params

app = ServerApp()


def weighted_accuracy(metrics):
    total = sum(n for n, _ in metrics)
    return {"accuracy": sum(n * m["accuracy"] for n, m in metrics) / total}


@app.main()
def main(grid, context) -> None:
    rc = context.run_config
    num_rounds, secagg = int(rc["num-rounds"]), bool(rc["secagg"])
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=3,
        min_evaluate_clients=3,
        min_available_clients=3,
        initial_parameters=ndarrays_to_parameters(initial_params()),
        on_fit_config_fn=lambda rnd: {"server-round": rnd},
        evaluate_metrics_aggregation_fn=weighted_accuracy,
    )
    ctx = LegacyContext(context, config=ServerConfig(num_rounds=num_rounds), strategy=strategy)
    fit = SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2, timeout=60) if secagg else default_fit_workflow

    # Wait (bounded) for the three SuperNodes so that the timed rounds exclude it.
    deadline = time.time() + 120
    while len(list(grid.get_node_ids())) < 3 and time.time() < deadline:
        time.sleep(0.2)

    starts, ends = [], []

    def timed_fit(g, c):
        starts.append(time.perf_counter())
        fit(g, c)

    def timed_evaluate(g, c):
        default_evaluate_workflow(g, c)
        ends.append(time.perf_counter())

    DefaultWorkflow(fit_workflow=timed_fit, evaluate_workflow=timed_evaluate)(grid, ctx)

    acc = ctx.history.metrics_distributed["accuracy"]
    result = {
        "secagg": secagg,
        "rounds": num_rounds,
        "total_s": ends[-1] - starts[0],
        "ms_per_round": 1000 * (ends[-1] - starts[0]) / num_rounds,
        "round_ms": [round(1000 * (e - s), 2) for s, e in zip(starts, ends)],
        "final_accuracy": acc[-1][1],
        "final_loss": ctx.history.losses_distributed[-1][1],
    }
    print("VEILBENCH " + json.dumps(result))
    if rc.get("result-file"):
        with open(str(rc["result-file"]), "w", encoding="utf-8") as f:
            json.dump(result, f)
