"""veil from Python: queries into DataFrames, federated training, local scoring.

The connection, the job signing and the answers are veil's own Rust client (``veil._native``),
so they behave exactly as the ``veil`` command does::

    import veil
    c = veil.connect("consortium/consumers/analyst/consumer.toml")
    c.datasets()                                   # what the parties serve
    df = c.query("SELECT carrier, COUNT(*) FROM flights GROUP BY carrier", rho=0.5)
    df.attrs["privacy"], df.attrs["contributors"]  # what the answer covers
    job = c.train("examples/jobs/train-cells.toml")
    for r in job.rounds(): ...
    model = job.model()
    model.predict(rows)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np
import pandas as pd

from . import _native

__all__ = ["connect", "Answer", "Client", "Job", "Model", "VeilError"]


class VeilError(Exception):
    """An error veil reports. ``rule`` names the policy rule of a refusal, when there is one."""

    def __init__(self, message: str):
        super().__init__(message)
        found = re.search(r"refused by rule ([a-z0-9-]+)", message)
        self.rule: Optional[str] = found.group(1) if found else None


def _call(f, *args, **kwargs):
    try:
        return f(*args, **kwargs)
    except _native.VeilError as e:
        raise VeilError(str(e)) from None


def connect(config: Union[str, os.PathLike], plaintext: bool = False) -> "Client":
    """Connects as the consumer a ``consumer.toml`` describes (mutual TLS, its signing key)."""
    return Client(config, plaintext=plaintext)


_FINAL = {"succeeded", "failed", "cancelled"}


class Client:
    """A consumer's connection to the consortium's coordinator."""

    def __init__(self, config: Union[str, os.PathLike], plaintext: bool = False):
        self._native = _call(_native.Client, os.fspath(config), plaintext)

    @property
    def name(self) -> str:
        """The consumer's name in the roster."""
        return self._native.name

    def datasets(self) -> pd.DataFrame:
        """The catalog: one row per dataset and column, with its type, declared bounds and
        domain, and the parties serving the dataset."""
        rows = []
        for text in _call(self._native.datasets):
            d = json.loads(text)
            for c in d.get("columns", []):
                bounds = c.get("bounds")
                rows.append(
                    {
                        "dataset": d["name"],
                        "column": c["name"],
                        "type": c["type"],
                        "min": bounds[0] if bounds else None,
                        "max": bounds[1] if bounds else None,
                        "domain": c.get("domain"),
                        "parties": list(d.get("parties", [])),
                    }
                )
        return pd.DataFrame(
            rows, columns=["dataset", "column", "type", "min", "max", "domain", "parties"]
        )

    def submit(self, spec: Union[str, os.PathLike, Mapping[str, Any]], require_all: bool = False) -> "Job":
        """Plans, signs and submits a job: a specification as a dict, TOML or JSON text, or
        the path of a file holding one (a trainer program it names is inlined, as ``veil
        submit`` does)."""
        if isinstance(spec, Mapping):
            status = _call(self._native.submit, json.dumps(spec), require_all)
        elif _is_path(spec):
            status = _call(self._native.submit_file, os.fspath(spec), require_all)
        else:
            status = _call(self._native.submit, os.fspath(spec), require_all)
        return Job(self, json.loads(status))

    def query(
        self,
        sql: str,
        rho: Optional[float] = None,
        k_threshold: Optional[int] = None,
        purpose: Optional[str] = None,
        min_parties: Optional[int] = None,
        require_all: bool = False,
        timeout: float = 600.0,
    ) -> pd.DataFrame:
        """Runs a SQL query and returns its table. Noise intervals (``<column> ±95%``) and
        withheld values (``<column> withheld``) are columns; ``df.attrs`` holds ``privacy``,
        ``coverage``, ``contributors`` and ``notes``."""
        request: Dict[str, Any] = {"sql": sql}
        if rho is not None:
            request["privacy"] = {"rho": rho}
        if k_threshold is not None:
            request["k_threshold"] = k_threshold
        if purpose is not None:
            request["purpose"] = purpose
        if min_parties is not None:
            request["min_parties"] = min_parties
        job = self.submit(request, require_all=require_all)
        job.wait(timeout=timeout)
        return table_frame(job.result())

    def train(self, spec: Union[str, os.PathLike, Mapping[str, Any]], require_all: bool = False) -> "Job":
        """Submits a training job (a dict, TOML text, or a file's path); follow it with
        ``rounds()`` and fetch the model with ``model()``."""
        return self.submit(spec, require_all=require_all)

    def jobs(self) -> pd.DataFrame:
        """The consumer's jobs, newest last."""
        rows = [json.loads(s) for s in _call(self._native.jobs)]
        frame = pd.DataFrame(rows, columns=["job_id", "dataset", "state", "detail", "created_unix_ms"])
        return frame.sort_values("created_unix_ms", kind="stable").reset_index(drop=True)

    def cancel(self, job_id: str) -> Dict[str, Any]:
        """Asks the coordinator to cancel a job; returns its status."""
        return json.loads(_call(self._native.cancel, job_id))

    def receipts(self) -> List[Dict[str, Any]]:
        """The release receipts of the consumer's jobs: what was released, from whom, at what ρ."""
        return [json.loads(r) for r in _call(self._native.receipts)]

    def budget(self) -> pd.DataFrame:
        """The zCDP ρ the consumer's released answers charged, per dataset (from its receipts)."""
        rows = [{"dataset": r["dataset"], "rho": float(r.get("rho", 0.0))} for r in self.receipts()]
        frame = pd.DataFrame(rows, columns=["dataset", "rho"])
        spent = frame.groupby("dataset", as_index=False).agg(rho=("rho", "sum"), releases=("rho", "size"))
        return spent


def _is_path(spec: Union[str, os.PathLike]) -> bool:
    """Whether a specification given as a string names a file rather than holding the text."""
    if isinstance(spec, os.PathLike):
        return True
    return "\n" not in spec and not spec.lstrip().startswith("{") and "=" not in spec


class Job:
    """A submitted job."""

    def __init__(self, client: Client, status: Dict[str, Any]):
        self._client = client
        self.id: str = status["job_id"]
        self._status = status

    def __repr__(self) -> str:
        return f"<veil.Job {self.id} {self._status.get('state')}>"

    def status(self) -> Dict[str, Any]:
        """The job's status now: state, detail, latest progress and who it covers."""
        self._status = json.loads(_call(self._client._native.status, self.id))
        return self._status

    def wait(self, timeout: float = 600.0, poll: float = 0.05) -> Dict[str, Any]:
        """Waits for the job to end; raises ``VeilError`` unless it succeeded. Ctrl-C cancels
        the job."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                s = self.status()
                if s["state"] in _FINAL:
                    break
                if time.monotonic() > deadline:
                    raise VeilError(f"job {self.id} is still {s['state']} after {timeout} s")
                time.sleep(poll)
        except KeyboardInterrupt:
            self.cancel()
            raise
        if s["state"] != "succeeded":
            raise VeilError(f"job {self.id} {s['state']}: {s['detail']}")
        return s

    def cancel(self) -> Dict[str, Any]:
        """Asks the coordinator to cancel the job."""
        return self._client.cancel(self.id)

    def result(self) -> Dict[str, Any]:
        """The finished job's result, as ``veil query --json`` gives it."""
        return json.loads(_call(self._client._native.result, self.id))

    def answer(self) -> Dict[str, Any]:
        """The finished job's answer (a training job's rounds and model)."""
        return json.loads(_call(self._client._native.answer, self.id))

    def rounds(self, timeout: float = 3600.0, progress: bool = True) -> Iterator[Dict[str, Any]]:
        """A training job's round reports, each once, as they arrive; then the job's end
        (``VeilError`` unless it succeeded). Shows a progress bar when ``tqdm`` is installed
        and ``progress`` is set. Ctrl-C cancels the job."""
        seen = -1
        bar = _progress_bar(progress)
        deadline = time.monotonic() + timeout
        try:
            while True:
                s = self.status()
                report = s.get("progress")
                if isinstance(report, dict) and isinstance(report.get("round"), int) and report["round"] > seen:
                    # Reports in between (rounds are faster than polling) come from the answer at
                    # the end; the live one is yielded now.
                    seen = report["round"]
                    if bar is not None:
                        bar.update(1)
                    yield report
                if s["state"] in _FINAL:
                    break
                if time.monotonic() > deadline:
                    raise VeilError(f"job {self.id} is still {s['state']} after {timeout} s")
                time.sleep(0.02)
        except KeyboardInterrupt:
            self.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
        if s["state"] != "succeeded":
            raise VeilError(f"job {self.id} {s['state']}: {s['detail']}")
        for report in self.answer().get("rounds", []):
            if isinstance(report, dict) and report.get("round", -1) > seen:
                seen = report["round"]
                yield report

    def history(self) -> pd.DataFrame:
        """A finished training job's rounds: one row per round, with its contributors and
        the held-out metrics of the model the round started from (and ε under DP)."""
        rows = []
        for r in self.answer().get("rounds", []):
            row = {"round": r.get("round"), "contributors": r.get("contributors")}
            row.update(r.get("metrics") or {})
            if r.get("epsilon") is not None:
                row["epsilon"] = r["epsilon"]
            rows.append(row)
        return pd.DataFrame(rows)

    def follow(self, plot: bool = True, timeout: float = 3600.0) -> pd.DataFrame:
        """Follows a training job to its end with a live progress bar and, in a notebook, a
        loss and accuracy plot redrawn as the rounds arrive; returns its history. Ctrl-C
        cancels the job."""
        handle = None
        if plot:
            try:
                from IPython import get_ipython
                from IPython.display import display

                if get_ipython() is not None:
                    handle = display(self._figure(pd.DataFrame()), display_id=True)
            except ModuleNotFoundError:
                handle = None
        rows = []
        for report in self.rounds(timeout=timeout):
            row = {"round": report.get("round"), "contributors": report.get("contributors")}
            row.update(report.get("metrics") or {})
            rows.append(row)
            if handle is not None:
                handle.update(self._figure(pd.DataFrame(rows)))
        history = self.history()
        if handle is not None:
            handle.update(self._figure(history))
        return history

    def _figure(self, history: pd.DataFrame):
        import matplotlib

        if "ipykernel" not in __import__("sys").modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        for column, label in (("loss", "held-out loss"), ("accuracy", "held-out accuracy")):
            if column in history:
                ax.plot(history["round"], history[column], label=label)
        ax.set_xlabel("round")
        ax.set_title(f"job {self.id}")
        if len(history):
            ax.legend()
        plt.close(fig)
        return fig

    def plot(self):
        """Loss and accuracy per round of a finished training job (matplotlib)."""
        return self._figure(self.history())

    def _repr_html_(self) -> str:
        import html

        s = self._status
        report = s.get("progress") if isinstance(s.get("progress"), dict) else None
        latest = f", round {report['round'] + 1}" if report and isinstance(report.get("round"), int) else ""
        return f"<p>veil job <code>{html.escape(self.id)}</code>: {html.escape(s.get('state', ''))}{latest} {html.escape(s.get('detail', ''))}</p>"

    def model(self) -> "Model":
        """The trained model of a finished training job."""
        self.wait()
        answer = self.answer()
        if "model" not in answer:
            raise VeilError(f"job {self.id} released no model")
        return Model(answer["model"])


def _progress_bar(wanted: bool):
    if not wanted:
        return None
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(unit="round")


@dataclass
class Model:
    """A trained model as its file holds it: parameters, preprocessing and provenance."""

    file: Dict[str, Any]
    layers: List[Dict[str, np.ndarray]] = field(init=False)

    def __post_init__(self):
        parameters = np.asarray(self.file["parameters"], dtype=np.float64)
        self.layers = []
        for layer in self.file.get("layers", []):
            at, n_in, n_out = layer["weights_at"], layer["inputs"], layer["outputs"]
            weights = parameters[at : at + n_in * n_out].reshape(n_in, n_out)
            biases = parameters[layer["biases_at"] : layer["biases_at"] + n_out]
            self.layers.append({"weights": weights, "biases": biases, "activation": layer.get("activation")})

    @property
    def parameters(self) -> np.ndarray:
        """The flat parameter vector, as the parties trained it."""
        return np.asarray(self.file["parameters"], dtype=np.float64)

    @property
    def features(self) -> List[str]:
        """The model's inputs, by name."""
        return list(self.file["features"])

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Scores rows of the raw columns locally, through the model's own encoding and
        standardisation: the numbers ``veil predict`` gives."""
        with tempfile.TemporaryDirectory() as d:
            model_path, rows_path = Path(d, "model.json"), Path(d, "rows.csv")
            model_path.write_text(json.dumps(self.file))
            rows.to_csv(rows_path, index=False)
            text = _call(_native.predict, str(model_path), str(rows_path))
        from io import StringIO

        return pd.read_csv(StringIO(text))

    def to_torch(self) -> Dict[str, Any]:
        """A ``state_dict`` for the equivalent ``torch.nn.Sequential`` of ``nn.Linear`` layers
        (``layers.{i}.weight`` as outputs × inputs, ``layers.{i}.bias``)."""
        import torch

        state = {}
        for i, layer in enumerate(self.layers):
            state[f"layers.{i}.weight"] = torch.tensor(layer["weights"].T.copy())
            state[f"layers.{i}.bias"] = torch.tensor(layer["biases"].copy())
        return state


class Answer(pd.DataFrame):
    """A result table: a DataFrame whose display ends with a line on what it covers (its
    parties and privacy); ``attrs`` holds the details."""

    @property
    def _constructor(self):
        return Answer

    def coverage_note(self) -> str:
        """One line on what the answer covers: its parties, and its privacy when it has one."""
        coverage = self.attrs.get("coverage") or []
        contributors = self.attrs.get("contributors") or []
        parts = []
        if coverage:
            parts.append(f"covers {len(contributors)} of the {len(coverage)} parties serving the dataset ({', '.join(map(str, contributors))})")
            missing = [p for p in coverage if p.get("outcome") != "contributed"]
            for p in missing:
                why = f"refused by rule {p['rule']}" if p.get("rule") else p.get("outcome", "")
                parts.append(f"{p.get('name')}: {why}")
        privacy = self.attrs.get("privacy")
        if privacy:
            parts.append(f"differentially private: ρ = {privacy.get('rho')}, ε = {privacy.get('epsilon', float('nan')):.3g} at δ = {privacy.get('delta')}")
        return "; ".join(parts)

    def __repr__(self) -> str:
        note = self.coverage_note()
        return super().__repr__() + (f"\n{note}" if note else "")

    def _repr_html_(self) -> str:
        import html

        table = super()._repr_html_() or ""
        note = self.coverage_note()
        return table + (f"<p><small>{html.escape(note)}</small></p>" if note else "")


def table_frame(result: Mapping[str, Any]) -> pd.DataFrame:
    """A result table as a DataFrame: one column per heading, then ``<heading> ±95%`` for
    values with a noise interval and ``<heading> withheld`` for values withheld (fewer
    contributors than the k threshold); attributes ``privacy``, ``coverage``,
    ``contributors`` and ``notes``."""
    headers = list(result.get("headers", []))
    rows = result.get("rows", [])
    frame = Answer([list(r) for r in rows], columns=headers)
    ci95 = result.get("ci95")
    if ci95:
        for j, h in enumerate(headers):
            column = [r[j] if j < len(r) else None for r in ci95]
            if any(v is not None for v in column):
                frame[f"{h} ±95%"] = column
    for j, h in enumerate(headers):
        withheld = [row[j] is None for row in rows]
        if any(withheld):
            frame[f"{h} withheld"] = withheld
    coverage = result.get("coverage", [])
    frame.attrs["privacy"] = result.get("privacy")
    frame.attrs["coverage"] = coverage
    frame.attrs["contributors"] = [p.get("name") for p in coverage if p.get("outcome") == "contributed"]
    frame.attrs["notes"] = result.get("notes", [])
    return frame
