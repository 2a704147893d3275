"""The Python client against a loopback consortium of real processes: `veil init`, a
coordinator and three hospital parties over mutual TLS on 127.0.0.1, started from the `veil`
binary that `VEIL_BIN` names (CI builds it; `cargo build -p veil-cli`).
"""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

import veil

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data" / "breast_cancer"
VEIL = os.environ.get("VEIL_BIN", str(REPO / "target" / "debug" / "veil"))
HOSPITALS = ["hospital_a", "hospital_b", "hospital_c"]
FEATURES = ["mean_radius", "mean_texture", "mean_smoothness", "worst_radius"]


def run(*args, **kwargs):
    out = subprocess.run([VEIL, *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RUST_LOG": "warn"}, **kwargs)
    assert out.returncode == 0, f"veil {' '.join(args)}: {out.stderr}"
    return out.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def consortium(tmp_path_factory):
    root = tmp_path_factory.mktemp("consortium") / "c"
    run("init", str(root), "--parties", ",".join(HOSPITALS), "--listen", f"127.0.0.1:{free_port()}")
    header = (DATA / "hospital_a.csv").read_text().splitlines()[0].split(",")
    columns = ", ".join(f'{c} = "{"int" if c == "target" else "float"}"' for c in header)
    for h in HOSPITALS:
        with open(root / "parties" / h / "party.toml", "a") as f:
            f.write(
                f'\n[[datasets]]\nname = "cells"\npath = "{DATA / (h + ".csv")}"\ncolumns = {{ {columns} }}\n'
                'bounds = { mean_radius = [0.0, 50.0] }\ndomains = { target = ["0", "1"] }\n'
                '[datasets.policy]\npurposes = ["research"]\n'
            )
    logs = root / "logs"
    logs.mkdir()
    processes = []

    def start(name, *args):
        log = open(logs / f"{name}.log", "w")
        processes.append(subprocess.Popen([VEIL, *args], stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, "RUST_LOG": "warn"}))

    try:
        start("coordinator", "coordinator", "--config", str(root / "coordinator" / "coordinator.toml"))
        for h in HOSPITALS:
            start(h, "party", "--config", str(root / "parties" / h / "party.toml"))
        operator = root / "consumers" / "operator" / "consumer.toml"
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run([VEIL, "parties", "--json", "--config", str(operator)],
                                 capture_output=True, text=True, timeout=30)
            if out.stdout.count('"connected":true') >= len(HOSPITALS):
                break
            assert time.monotonic() < deadline, f"the parties did not connect: {out.stderr}"
            time.sleep(0.2)
        yield root
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="session")
def analyst(consortium):
    return consortium / "consumers" / "analyst" / "consumer.toml"


@pytest.fixture(scope="session")
def client(analyst):
    return veil.connect(analyst)


def train_spec(rounds):
    return {
        "kind": "train", "dataset": "cells", "features": FEATURES, "label": "target",
        "purpose": "research", "rounds": rounds, "seed": 7,
        "model": {"kind": "logistic_regression"},
        "local": {"epochs": 1, "batch_size": 16, "learning_rate": 0.1, "optimizer": {"kind": "sgd"}},
    }


def test_datasets_list_columns_bounds_domains_and_parties(client):
    d = client.datasets()
    cells = d[d.dataset == "cells"].set_index("column")
    assert set(FEATURES) <= set(cells.index)
    assert (cells.loc["mean_radius", "min"], cells.loc["mean_radius", "max"]) == (0.0, 50.0)
    assert cells.loc["target", "domain"] == ["0", "1"]
    assert cells.loc["mean_radius", "parties"] == HOSPITALS


def test_a_query_is_the_dataframe_of_veil_query_json(client, analyst):
    sql = "SELECT target, COUNT(*) AS n, AVG(mean_radius) FROM cells GROUP BY target"
    df = client.query(sql, purpose="research")
    cli = json.loads(run("query", sql, "--purpose", "research", "--json", "--config", str(analyst)))
    expected = veil.table_frame(cli)
    pd.testing.assert_frame_equal(df, expected)
    assert list(df.columns[:3]) == ["target", "n", "avg(mean_radius)"]
    assert df.n.sum() == sum(len((DATA / f"{h}.csv").read_text().splitlines()) - 1 for h in HOSPITALS)
    assert df.attrs["contributors"] == HOSPITALS


def test_a_private_query_carries_its_intervals_and_privacy(client):
    df = client.query("SELECT COUNT(*) AS n, AVG(mean_radius) FROM cells", rho=0.5, purpose="research")
    assert df.attrs["privacy"]["rho"] == 0.5
    assert "n ±95%" in df.columns and df["n ±95%"].iloc[0] > 0


def test_a_refused_job_raises_with_its_rule(client):
    with pytest.raises(veil.VeilError) as refused:
        client.query("SELECT COUNT(*) FROM cells", purpose="marketing")
    assert refused.value.rule == "purpose", str(refused.value)
    assert "research" in str(refused.value)


def test_training_rounds_model_and_local_scoring_match_veil_predict(client, tmp_path):
    job = client.train(train_spec(5))
    reports = list(job.rounds(progress=False))
    assert [r["round"] for r in reports] == list(range(5))
    model = job.model()
    assert model.features == FEATURES and len(model.parameters) == len(FEATURES) + 1
    rows = pd.read_csv(DATA / "hospital_c.csv")
    scored = model.predict(rows)
    assert len(scored) == len(rows)
    (tmp_path / "model.json").write_text(json.dumps(model.file))
    rows.to_csv(tmp_path / "rows.csv", index=False)
    cli = run("predict", "--model", str(tmp_path / "model.json"), str(tmp_path / "rows.csv"))
    assert scored.to_csv(index=False) == pd.read_csv(__import__("io").StringIO(cli)).to_csv(index=False)
    accuracy = (scored.iloc[:, 0] == rows.target).mean()
    assert accuracy > 0.85, accuracy


def test_a_cancelled_training_job_ends_cancelled(client):
    job = client.train(train_spec(100_000))
    deadline = time.monotonic() + 30
    while job.status()["state"] not in ("running",) and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()
    with pytest.raises(veil.VeilError, match="cancelled"):
        job.wait(timeout=30)
    assert job.status()["state"] == "cancelled"


def test_jobs_receipts_and_budget(client):
    client.query("SELECT COUNT(*) FROM cells", rho=0.25, purpose="research")
    jobs = client.jobs()
    assert (jobs.state == "succeeded").any()
    receipts = client.receipts()
    assert any(r["rho"] == 0.25 and r["dataset"] == "cells" for r in receipts)
    budget = client.budget().set_index("dataset")
    assert budget.loc["cells", "rho"] >= 0.25


def test_ctrl_c_during_rounds_cancels_the_job(client):
    job = client.train(train_spec(100_000))
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in job.rounds(progress=False):
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    deadline = time.monotonic() + 30
    while job.status()["state"] != "cancelled":
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.05)


def test_an_answer_says_what_it_covers_when_shown(client):
    df = client.query("SELECT COUNT(*) AS n FROM cells", rho=0.5, purpose="research")
    assert isinstance(df, veil.Answer)
    shown = df._repr_html_()
    assert "covers 3 of the 3 parties" in shown and "ρ = 0.5" in shown
    assert "covers 3 of the 3 parties" in repr(df)


def test_the_example_notebook_runs_end_to_end(analyst, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = REPO / "examples" / "notebooks" / "hospitals.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    monkeypatch.setenv("VEIL_CONSUMER", str(analyst))
    monkeypatch.setenv("VEIL_EXAMPLES", str(REPO / "examples"))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs), "the training plot"


def test_to_torch_gives_the_same_scores(client):
    torch = pytest.importorskip("torch")
    job = client.train(train_spec(3))
    model = job.model()
    state = model.to_torch()
    net = torch.nn.Module()
    net.layers = torch.nn.Sequential(*[torch.nn.Linear(l["weights"].shape[0], l["weights"].shape[1]).double()
                                       for l in model.layers])
    net.load_state_dict(state)
    rows = pd.read_csv(DATA / "hospital_a.csv")
    std = model.file["standardizer"]
    x = (rows[FEATURES].to_numpy() - std["mean"]) / std["scale"]
    p = torch.sigmoid(net.layers(torch.tensor(x))).detach().numpy()[:, 0]
    veil_p = model.predict(rows).iloc[:, -1].to_numpy()
    assert abs(p - veil_p).max() < 1e-5


def test_a_job_file_is_read_as_veil_submit_reads_it(client):
    job = client.train(REPO / "examples" / "jobs" / "train-cells.toml")
    history = job.follow(plot=False)
    assert len(history) == 30 and history["accuracy"].iloc[-1] > 0.85


def test_every_round_is_yielded_once_in_order_however_slowly_it_is_followed(client):
    job = client.train(train_spec(12))
    seen = []
    for report in job.rounds(progress=False):
        seen.append(report["round"])
        time.sleep(0.05)  # slower than the rounds: the polling misses some
    assert seen == list(range(12))


def test_a_malformed_table_is_a_veil_error():
    with pytest.raises(veil.VeilError, match="malformed table"):
        veil.table_frame({"headers": ["a", "b"], "rows": [[1]]})
    with pytest.raises(veil.VeilError, match="malformed"):
        veil.Model({"parameters": "not numbers", "layers": [{"weights_at": 0}]})
