"""veil from Python: queries into DataFrames, federated training, local scoring.

The connection, the job signing and the answers are veil's own Rust client (``veil._native``),
so they behave exactly as the ``veil`` command does::

    import veil
    c = veil.connect("consortium/consumers/analyst/consumer.toml")
    c.datasets()                                   # what the parties serve
    df = c.query("SELECT carrier, COUNT(*) FROM flights GROUP BY carrier", rho=0.5)
    df.attrs["privacy"], df.attrs["contributors"]  # what the answer covers
    job = c.train("examples/jobs/train-cells.toml")
    history = job.follow()                         # progress bar, live plot in a notebook
    model = job.model()
    model.predict(rows)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from io import StringIO
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import pandas as pd

from . import _native

__all__ = ["connect", "Answer", "Client", "Job", "Model", "Plot", "VeilError", "table_frame"]

Spec = Union[str, os.PathLike, Mapping[str, Any]]


class VeilError(Exception):
    """An error veil reports, with the message ``veil`` prints. ``rule`` names the policy rule
    of a refusal, when there is one."""

    def __init__(self, message: str, rule: Optional[str] = None):
        super().__init__(message)
        found = re.search(r"refused by rule ([a-z0-9-]+)", message)
        self.rule: Optional[str] = rule or (found.group(1) if found else None)


def _call(f, *args):
    try:
        return f(*args)
    except _native.VeilError as e:
        raise VeilError(str(e)) from None


def _parse(text: str, what: str) -> Any:
    """JSON from the coordinator; anything else is a ``VeilError`` naming what it was."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as e:
        raise VeilError(f"the coordinator sent {what} that is not JSON: {e}") from None


def _object(value: Any, what: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise VeilError(f"the coordinator sent {what} that is not a JSON object")
    return value


def connect(config: Union[str, os.PathLike], dangerous_plaintext: bool = False) -> "Client":
    """Connects as the consumer a ``consumer.toml`` describes (mutual TLS, its signing key)."""
    return Client(config, dangerous_plaintext=dangerous_plaintext)


class Client:
    """A consumer's connection to the consortium's coordinator."""

    def __init__(self, config: Union[str, os.PathLike], dangerous_plaintext: bool = False):
        self._native = _call(_native.Client, os.fspath(config), dangerous_plaintext)

    @property
    def name(self) -> str:
        """The consumer's name in the roster."""
        return self._native.name

    def datasets(self) -> pd.DataFrame:
        """The catalog: one row per dataset and column, with its type, declared bounds and
        domain, and the parties serving the dataset."""
        rows = []
        for text in _call(self._native.datasets):
            d = _object(_parse(text, "a catalog entry"), "a catalog entry")
            for c in d.get("columns") or []:
                bounds = c.get("bounds") if isinstance(c, dict) else None
                rows.append(
                    {
                        "dataset": d.get("name"),
                        "column": c.get("name") if isinstance(c, dict) else None,
                        "type": c.get("type") if isinstance(c, dict) else None,
                        "min": bounds[0] if bounds else None,
                        "max": bounds[1] if bounds else None,
                        "domain": c.get("domain") if isinstance(c, dict) else None,
                        "parties": list(d.get("parties") or []),
                    }
                )
        return pd.DataFrame(rows, columns=["dataset", "column", "type", "min", "max", "domain", "parties"])

    def submit(self, spec: Spec, require_all: bool = False) -> "Job":
        """Plans, signs and submits a job: a specification as a dict, TOML or JSON text, or
        the path of a file holding one (a trainer program it names is inlined, as ``veil
        submit`` does)."""
        if isinstance(spec, Mapping):
            status = _call(self._native.submit, json.dumps(spec), require_all)
        elif _is_path(spec):
            status = _call(self._native.submit_file, os.fspath(spec), require_all)
        else:
            status = _call(self._native.submit, os.fspath(spec), require_all)
        return Job(self, _object(_parse(status, "a job status"), "a job status"))

    def query(
        self,
        sql: str,
        rho: Optional[float] = None,
        k_threshold: Optional[int] = None,
        purpose: Optional[str] = None,
        min_parties: Optional[int] = None,
        require_all: bool = False,
        timeout: float = 600.0,
    ) -> "Answer":
        """Runs a SQL query and returns its table as an :class:`Answer`: noise intervals are
        ``<column> ±95%`` columns, a grouped table's suppressed groups are flagged in its
        ``suppressed`` column, and ``attrs`` holds ``privacy``, ``coverage``,
        ``contributors``, ``notes``, ``approximate`` and ``histograms``."""
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

    def train(self, spec: Spec, require_all: bool = False) -> "Job":
        """Submits a training job (a dict, TOML text, or a file's path); follow it with
        :meth:`Job.follow` or :meth:`Job.rounds`, and fetch the model with :meth:`Job.model`."""
        return self.submit(spec, require_all=require_all)

    def jobs(self) -> pd.DataFrame:
        """The consumer's jobs, newest last."""
        rows = [_object(_parse(s, "a job status"), "a job status") for s in _call(self._native.jobs)]
        frame = pd.DataFrame(rows, columns=["job_id", "dataset", "state", "detail", "created_unix_ms"])
        return frame.sort_values("created_unix_ms", kind="stable").reset_index(drop=True)

    def cancel(self, job_id: str) -> Dict[str, Any]:
        """Asks the coordinator to cancel a job; returns its status."""
        return _object(_parse(_call(self._native.cancel, job_id), "a job status"), "a job status")

    def receipts(self) -> List[Dict[str, Any]]:
        """The release receipts of the consumer's jobs: what was released, from whom, at what ρ."""
        return [_object(_parse(r, "a receipt"), "a receipt") for r in _call(self._native.receipts)]

    def budget(self) -> pd.DataFrame:
        """The zCDP ρ this consumer's released answers charged, per dataset, from its receipts."""
        rows = [
            {"dataset": r.get("dataset"), "rho": float(r.get("rho") or 0.0)}
            for r in self.receipts()
            if r.get("consumer") == self.name
        ]
        frame = pd.DataFrame(rows, columns=["dataset", "rho"])
        return frame.groupby("dataset", as_index=False).agg(rho=("rho", "sum"), releases=("rho", "size"))


def _is_path(spec: Union[str, os.PathLike]) -> bool:
    """Whether a specification names a file rather than holding the text."""
    if isinstance(spec, os.PathLike):
        return True
    return "\n" not in spec and not spec.lstrip().startswith("{") and Path(spec).is_file()


class Job:
    """A submitted job."""

    def __init__(self, client: Client, status: Dict[str, Any]):
        self._client = client
        self.id: str = str(status.get("job_id"))
        self._status = status
        self._fetched: Optional[Tuple[Dict[str, Any], Dict[str, Any]]] = None

    def __repr__(self) -> str:
        return f"<veil.Job {self.id} {self._status.get('state')}>"

    def _repr_html_(self) -> str:
        import html

        s = self._status
        report = s.get("progress") if isinstance(s.get("progress"), dict) else None
        latest = f", round {report['round'] + 1}" if report and isinstance(report.get("round"), int) else ""
        return (
            f"<p>veil job <code>{html.escape(self.id)}</code>: {html.escape(str(s.get('state', '')))}"
            f"{latest} {html.escape(str(s.get('detail', '')))}</p>"
        )

    def status(self) -> Dict[str, Any]:
        """The job's status now: state, detail, latest progress and who it covers."""
        self._status = _object(_parse(_call(self._client._native.status, self.id), "a job status"), "a job status")
        return self._status

    def _ended(self, s: Dict[str, Any]) -> Dict[str, Any]:
        """The final status ``s``, or ``VeilError`` unless the job succeeded: the refusal's
        rule from who it covers."""
        if s.get("state") == "succeeded":
            return s
        rules = [p.get("rule") for p in s.get("coverage") or [] if isinstance(p, dict) and p.get("rule")]
        raise VeilError(f"job {self.id} {s.get('state')}: {s.get('detail')}", rule=rules[0] if rules else None)

    def _interrupted(self) -> None:
        try:
            self.cancel()
        except VeilError:
            pass

    def wait(self, timeout: float = 600.0, poll: float = 0.05) -> Dict[str, Any]:
        """Waits for the job to end; raises ``VeilError`` unless it succeeded. Ctrl-C cancels
        the job."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                s = self.status()
                if s.get("final"):
                    return self._ended(s)
                if time.monotonic() > deadline:
                    raise VeilError(f"job {self.id} is still {s.get('state')} after {timeout} s")
                time.sleep(poll)
        except KeyboardInterrupt:
            self._interrupted()
            raise

    def cancel(self) -> Dict[str, Any]:
        """Asks the coordinator to cancel the job."""
        return self._client.cancel(self.id)

    def _fetch(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        # Fetched once: each fetch counts against the consumer's quota and is audited.
        if self._fetched is None:
            view, answer = _call(self._client._native.result, self.id)
            self._fetched = (
                _object(_parse(view, "a result"), "a result"),
                _object(_parse(answer, "an answer"), "an answer"),
            )
        return self._fetched

    def result(self) -> Dict[str, Any]:
        """The finished job's result, as ``veil query --json`` gives it."""
        return self._fetch()[0]

    def answer(self) -> Dict[str, Any]:
        """The finished job's answer (a training job's rounds and model)."""
        return self._fetch()[1]

    def rounds(self, timeout: float = 3600.0, progress: bool = True) -> Iterator[Dict[str, Any]]:
        """A training job's round reports, each once and in order, as they arrive; then the
        job's end (``VeilError`` unless it succeeded). A report the polling missed comes from
        the answer at the end. Shows a progress bar when ``tqdm`` is installed and
        ``progress`` is set. Ctrl-C cancels the job."""
        seen = -1
        bar = _progress_bar(progress)
        deadline = time.monotonic() + timeout
        try:
            while True:
                s = self.status()
                report = s.get("progress")
                if isinstance(report, dict) and report.get("round") == seen + 1:
                    seen += 1
                    if bar is not None:
                        bar.update(1)
                    yield report
                if s.get("final"):
                    break
                if time.monotonic() > deadline:
                    raise VeilError(f"job {self.id} is still {s.get('state')} after {timeout} s")
                time.sleep(0.02)
            self._ended(s)
            reports = [r for r in self.answer().get("rounds") or [] if isinstance(r, dict) and isinstance(r.get("round"), int)]
            for report in sorted(reports, key=lambda r: r["round"]):
                if report["round"] > seen:
                    seen = report["round"]
                    if bar is not None:
                        bar.update(1)
                    yield report
        except KeyboardInterrupt:
            self._interrupted()
            raise
        finally:
            if bar is not None:
                bar.close()

    def history(self) -> pd.DataFrame:
        """A finished training job's rounds: one row per round, with its contributors and the
        held-out metrics of the model the round started from (and ε under DP)."""
        rows = []
        for r in self.answer().get("rounds") or []:
            if not isinstance(r, dict):
                continue
            row = {"round": r.get("round"), "contributors": r.get("contributors")}
            metrics = r.get("metrics")
            if isinstance(metrics, dict):
                row.update(metrics)
            if r.get("epsilon") is not None:
                row["epsilon"] = r["epsilon"]
            rows.append(row)
        return pd.DataFrame(rows)

    def follow(self, plot: bool = True, timeout: float = 3600.0) -> pd.DataFrame:
        """Follows a training job to its end with a progress bar and, in a notebook, a loss
        and accuracy plot redrawn as the rounds arrive; returns its history. Ctrl-C cancels
        the job."""
        handle = None
        if plot:
            try:
                from IPython import get_ipython
                from IPython.display import display

                if get_ipython() is not None:
                    handle = display(_figure(self.id, pd.DataFrame()), display_id=True)
            except ModuleNotFoundError:
                handle = None
        rows = []
        try:
            for report in self.rounds(timeout=timeout):
                row = {"round": report.get("round"), "contributors": report.get("contributors")}
                if isinstance(report.get("metrics"), dict):
                    row.update(report["metrics"])
                rows.append(row)
                if handle is not None:
                    handle.update(_figure(self.id, pd.DataFrame(rows)))
        except KeyboardInterrupt:
            self._interrupted()
            raise
        history = self.history()
        if handle is not None:
            handle.update(_figure(self.id, history))
        return history

    def plot(self) -> "Plot":
        """Loss and accuracy per round of a finished training job (a :class:`Plot`)."""
        return _figure(self.id, self.history())

    def model(self, timeout: float = 600.0) -> "Model":
        """The trained model of a training job, once it has ended (waits up to ``timeout``)."""
        self.wait(timeout=timeout)
        model = self.answer().get("model")
        if not isinstance(model, dict):
            raise VeilError(f"job {self.id} released no model")
        return Model(model)


class Plot:
    """A matplotlib figure (``.figure``) that shows itself as an image in a notebook, drawn
    without pyplot so that no backend is chosen or changed."""

    def __init__(self, figure):
        self.figure = figure

    def _repr_png_(self) -> bytes:
        from io import BytesIO

        from matplotlib.backends.backend_agg import FigureCanvasAgg

        out = BytesIO()
        FigureCanvasAgg(self.figure).print_png(out)
        return out.getvalue()

    def savefig(self, *args, **kwargs) -> None:
        """Saves the figure, as ``matplotlib.figure.Figure.savefig``."""
        self.figure.savefig(*args, **kwargs)


def _figure(title: str, history: pd.DataFrame) -> Plot:
    """Loss and accuracy per round."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    for column, label in (("loss", "held-out loss"), ("accuracy", "held-out accuracy")):
        if column in history:
            ax.plot(history["round"], history[column], label=label)
    ax.set_xlabel("round")
    ax.set_title(f"job {title}")
    if len(history):
        ax.legend()
    return Plot(fig)


def _progress_bar(wanted: bool):
    if not wanted:
        return None
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(unit="round")


class Model:
    """A trained model as its file holds it: parameters, preprocessing and provenance."""

    def __init__(self, file: Dict[str, Any]):
        self.file = file
        try:
            parameters = np.asarray(file["parameters"], dtype=np.float64)
            self.layers: List[Dict[str, Any]] = []
            for layer in file.get("layers") or []:
                at, n_in, n_out = layer["weights_at"], layer["inputs"], layer["outputs"]
                weights = parameters[at : at + n_in * n_out].reshape(n_in, n_out)
                biases = parameters[layer["biases_at"] : layer["biases_at"] + n_out]
                self.layers.append({"weights": weights, "biases": biases, "activation": layer.get("activation")})
        except (KeyError, TypeError, ValueError) as e:
            raise VeilError(f"the model file is malformed: {e!r}") from None

    def __repr__(self) -> str:
        return f"<veil.Model {len(self.features)} inputs, {len(self.parameters)} parameters>"

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
        standardisation: the numbers ``veil predict`` gives (its code), indexed as ``rows``."""
        with tempfile.TemporaryDirectory() as d:
            model_path, rows_path = Path(d, "model.json"), Path(d, "rows.csv")
            model_path.write_text(json.dumps(self.file))
            rows.to_csv(rows_path, index=False)
            text = _call(_native.predict, str(model_path), str(rows_path))
        scored = pd.read_csv(StringIO(text))
        scored.index = rows.index
        return scored

    def to_torch(self) -> Dict[str, Any]:
        """The dense layers' weights as a ``state_dict``, named as ``veil result
        --safetensors`` names them: ``layers.{i}.weight`` (outputs × inputs) and
        ``layers.{i}.bias`` for layer ``i``. Load it into a module holding ``self.layers =
        nn.ModuleList([nn.Linear(...), ...])`` that applies ReLU between layers; the inputs
        are standardised with ``file["standardizer"]`` first, and the output is a logit
        (sigmoid for logistic regression, softmax for the others)."""
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
        coverage = [p for p in self.attrs.get("coverage") or [] if isinstance(p, dict)]
        contributors = self.attrs.get("contributors") or []
        parts = []
        if coverage:
            parts.append(
                f"covers {len(contributors)} of the {len(coverage)} parties serving the dataset"
                f" ({', '.join(map(str, contributors))})"
            )
            for p in coverage:
                if p.get("outcome") != "contributed":
                    why = f"refused by rule {p['rule']}" if p.get("rule") else str(p.get("outcome", ""))
                    parts.append(f"{p.get('name')}: {why}")
        privacy = self.attrs.get("privacy")
        if isinstance(privacy, dict):
            epsilon = privacy.get("epsilon")
            eps = f"{epsilon:.3g}" if isinstance(epsilon, (int, float)) else "?"
            parts.append(f"differentially private: ρ = {privacy.get('rho')}, ε = {eps} at δ = {privacy.get('delta')}")
        return "; ".join(parts)

    def __repr__(self) -> str:
        note = self.coverage_note()
        return super().__repr__() + (f"\n{note}" if note else "")

    def _repr_html_(self) -> str:
        import html

        table = super()._repr_html_() or ""
        note = self.coverage_note()
        return table + (f"<p><small>{html.escape(note)}</small></p>" if note else "")


def table_frame(result: Mapping[str, Any]) -> Answer:
    """A result table (``veil query --json``) as an :class:`Answer`: one column per heading,
    then ``<heading> ±95%`` for values with a noise interval; attributes ``privacy``,
    ``coverage``, ``contributors``, ``notes``, ``approximate`` and ``histograms``."""
    try:
        headers = [str(h) for h in result.get("headers") or []]
        rows = [list(r) for r in result.get("rows") or []]
        if any(len(r) != len(headers) for r in rows):
            raise ValueError("a row's length differs from the headings'")
        frame = Answer(rows, columns=headers)
        ci95 = result.get("ci95")
        if ci95:
            if len(ci95) != len(rows) or any(not isinstance(r, list) or len(r) != len(headers) for r in ci95):
                raise ValueError("the intervals do not match the rows")
            for j, h in enumerate(headers):
                column = [r[j] for r in ci95]
                if any(v is not None for v in column):
                    frame[f"{h} ±95%"] = column
    except (TypeError, ValueError, AttributeError) as e:
        raise VeilError(f"the coordinator sent a malformed table: {e}") from None
    coverage = [p for p in result.get("coverage") or [] if isinstance(p, dict)]
    frame.attrs["privacy"] = result.get("privacy")
    frame.attrs["coverage"] = coverage
    frame.attrs["contributors"] = [p.get("name") for p in coverage if p.get("outcome") == "contributed"]
    frame.attrs["notes"] = result.get("notes") or []
    frame.attrs["approximate"] = result.get("approximate") or []
    frame.attrs["histograms"] = result.get("histograms") or []
    return frame
