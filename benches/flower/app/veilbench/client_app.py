"""ClientApp: one hospital per SuperNode (node-config: partition-id, data-dir)."""

from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from veilbench.task import evaluate, load_partition, train_one_epoch


class HospitalClient(NumPyClient):
    def __init__(self, partition_id: int, data_dir: str) -> None:
        self.pid = partition_id
        self.x_tr, self.y_tr, self.x_te, self.y_te = load_partition(data_dir, partition_id)

    def fit(self, parameters, config):
        seed = 1000 * int(config.get("server-round", 0)) + self.pid
        return train_one_epoch(parameters, self.x_tr, self.y_tr, seed), len(self.y_tr), {}

    def evaluate(self, parameters, config):
        loss, acc = evaluate(parameters, self.x_te, self.y_te)
        return loss, len(self.y_te), {"accuracy": acc}


def client_fn(context):
    cfg = context.node_config
    return HospitalClient(int(cfg["partition-id"]), str(cfg["data-dir"])).to_client()


def secagg_if_enabled(msg, ctxt, call_next):
    """Apply secaggplus_mod only when the run was started with secagg=true."""
    if ctxt.run_config.get("secagg", False):
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp(client_fn=client_fn, mods=[secagg_if_enabled])
