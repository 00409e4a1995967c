"""tracking.notify against a real HTTP server on 127.0.0.1: the events arrive in order with the study's
state, the URL never reaches MLflow, and a dead or missing URL only warns."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlflow import MlflowClient

import hpo
from hpo.errors import NoFeasibleTrial

STUDY = """
name: {name}
data: {{dataset: iris}}
model: mlp
search: {{sampler: grid, seed: 0{search}}}
cv: {{folds: 2}}
params: {{lr: [0.001, 0.05, 0.02], epochs: 4, width: 8}}
tracking:
  report: false
  notify: {{url_env: HPO_TEST_WEBHOOK, on: [{on}]}}
"""


@pytest.fixture
def webhook():
    """A local webhook: every POSTed JSON document, in the order it came."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "type": self.headers["Content-Type"], **json.loads(body)})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/T0/secret-token", received
    server.shutdown()
    server.server_close()


def test_events_arrive_in_order_with_the_studys_state(write_spec, store, webhook, monkeypatch):
    url, received = webhook
    monkeypatch.setenv("HPO_TEST_WEBHOOK", url)
    path = write_spec(STUDY.format(name="hooked", search="", on="new_best, finished, failed, interrupted"), "hooked")
    result = hpo.run(path, tracking_uri=store)

    events = [d["event"] for d in received]
    assert events[-1] == "finished" and set(events[:-1]) == {"new_best"}, events
    values = [d["value"] for d in received[:-1]]
    assert values == sorted(values) and len(set(values)) == len(values), "each new best beats the last"
    last = received[-1]
    assert last["path"] == "/hooks/T0/secret-token" and last["type"] == "application/json"
    assert (last["study"], last["metric"], last["direction"]) == ("hooked", "accuracy", "maximize")
    assert (last["best_value"], last["best_trial"]) == (pytest.approx(result.best_value), result.best_number)
    assert last["trials"] == result.counts and last["parent_run_id"] == result.parent_run_id
    assert last["model"] == result.registered_model and last["test_metrics"] == pytest.approx(result.test_metrics)
    assert "mlflow_url" not in last, "a sqlite store has no UI address"
    assert last["text"].startswith("hpo study hooked finished, best accuracy ")

    # the URL (a credential) is nowhere in what MLflow holds
    client = MlflowClient(store)
    for run in client.search_runs([result.experiment_id]):
        assert "secret-token" not in json.dumps({**run.data.params, **run.data.tags})
    spec_file = client.list_artifacts(result.parent_run_id, "spec")[0].path
    assert "secret-token" not in client.download_artifacts(result.parent_run_id, spec_file, str(path.parent / "dl"))


def test_a_study_that_fails_posts_failed(write_spec, store, webhook, monkeypatch):
    url, received = webhook
    monkeypatch.setenv("HPO_TEST_WEBHOOK", url)
    path = write_spec(STUDY.format(name="unfeasible", search=", constraints: ['n_params <= 1']", on="failed"), "unf")
    with pytest.raises(NoFeasibleTrial):
        hpo.run(path, tracking_uri=store)
    assert [d["event"] for d in received] == ["failed"]
    assert received[0]["reason"].startswith("NoFeasibleTrial: none of the 3 complete trials meets search.constraints")
    assert received[0]["trials"]["complete"] == 3


def test_an_interrupted_study_posts_interrupted(write_spec, store, webhook, monkeypatch):
    url, received = webhook
    monkeypatch.setenv("HPO_TEST_WEBHOOK", url)

    class CtrlC:  # the first finished trial is followed by a Ctrl-C
        def start(self, *a, **k):
            pass

        def trial_done(self, *a, **k):
            raise KeyboardInterrupt

        def message(self, *a):
            pass

        def stop(self):
            pass

    path = write_spec(STUDY.format(name="cut", search="", on="interrupted, finished"), "cut")
    result = hpo.run(path, tracking_uri=store, progress=CtrlC())
    assert result.interrupted
    assert [d["event"] for d in received] == ["interrupted"]
    assert received[0]["reason"] == "stopped by a signal" and received[0]["trials"]["complete"] == 1


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_or_missing_url_only_warns(write_spec, store, monkeypatch, caplog):
    monkeypatch.setenv("HPO_TEST_WEBHOOK", f"http://127.0.0.1:{_dead_port()}/hook-secret")
    path = write_spec(STUDY.format(name="dead", search="", on="new_best, finished"), "dead")
    with caplog.at_level(logging.WARNING, logger="hpo"):
        result = hpo.run(path, tracking_uri=store)
    assert result.best_number is not None and not result.interrupted
    warnings = [r.getMessage() for r in caplog.records if "tracking.notify" in r.getMessage()]
    assert any("could not post the finished event to $HPO_TEST_WEBHOOK" in w for w in warnings), warnings
    assert not any("hook-secret" in w for w in warnings), "the URL is never logged"

    caplog.clear()
    monkeypatch.delenv("HPO_TEST_WEBHOOK")
    with caplog.at_level(logging.WARNING, logger="hpo"):
        hpo.run(write_spec(STUDY.format(name="unset", search="", on="finished"), "unset"), tracking_uri=store)
    assert any("environment variable HPO_TEST_WEBHOOK is not set" in r.getMessage() for r in caplog.records)


def test_the_ui_link_is_the_tracking_servers_address_without_credentials():
    from hpo.notify import ui_link

    assert ui_link("sqlite:///mlruns/mlflow.db", "1", "abc") is None
    assert ui_link("http://mlflow:5000/", "3", "abc") == "http://mlflow:5000/#/experiments/3/runs/abc"
    assert ui_link("https://user:pw@mlflow.example.com", "3", "abc") == \
        "https://mlflow.example.com/#/experiments/3/runs/abc"
