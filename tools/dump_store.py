"""Dump an `hpo run` study store as sorted, diffable text, to check that a refactor changes nothing stored.

    python tools/dump_store.py STORE_DIR OUT_FILE [--code-dir DIR]

STORE_DIR holds mlflow.db (tracking + registry), optuna.db and artifacts/. OUT_FILE gets one line per leaf,
``section | key | ... = <json>``, sorted, so two dumps compare with a plain ``diff``.

Compared: every MLflow experiment (name, stage, tags) and run (keyed by run name: status, stage, params,
tags, logged-model outputs, every metric's full history as [step, value] pairs); every artifact's relative
path (run and logged-model artifacts; text ones, .json/.yaml/.yml/.csv/.txt/.md/MLmodel, with the sha256
of their masked text and, under 20000 characters, that text line by line); the logged models (name,
status, source run, params, tags); the registry (models with tags and aliases; versions with number,
status, stage, source run name, source, tags, aliases); any other file in STORE_DIR; every Optuna study
(directions, user attrs) and trial (state, params, distributions, values, user/system attrs,
intermediate values).

Masked (the key stays, only the value is replaced, so key sets are still compared):
- run ids -> "<run:RUN NAME>", logged-model ids -> "<model:NAME@RUN NAME>", other 32-hex ids -> "<id>",
  in every string (tags, attrs, sources, MLmodel, trials.csv, artifact paths);
- STORE_DIR -> "<store>", --code-dir -> "<code>" (cwd-derived paths such as the Default experiment's);
- "YYYY-MM-DD HH:MM:SS" times -> "<time>", "N days HH:MM:SS" durations -> "<duration>";
- "<volatile>": tags mlflow.source.*, mlflow.user, *.version, hpo.git_commit, mlflow.log-model.*,
  any tag or attr key naming a host/pid/time/duration; metrics duration_s/*_time/wall* (their steps stay);
  trial user attr duration_s; trials.csv columns datetime_*, duration, *duration_s;
- not dumped at all: run/trial start and end times, metric timestamps, run ids themselves; the content
  of binary artifacts (.pt, .png, .html, model data: torch pickles are not byte-stable) and of the model's
  shipped code/ (.py), whose paths are still listed; __pycache__ files are left out.
Floats are rounded to 10 significant digits.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

V = "<volatile>"
TEXT_EXT = {".json", ".yaml", ".yml", ".csv", ".txt", ".md", ""}  # "" = MLmodel
VOLATILE_TAG = re.compile(r"^mlflow\.source\.|^mlflow\.user$|\.version$|^hpo\.git_commit$|^mlflow\.log-model\."
                          r"|host|(^|[._/])pid($|[._/])|timestamp|_time$|^time$|duration|elapsed|wall_?s")
VOLATILE_METRIC = re.compile(r"(^|/)(duration_s|wall\w*|\w*_time|elapsed\w*)$")
VOLATILE_CSV_COL = re.compile(r"^datetime_|^duration$|duration_s$")
HEX = re.compile(r"\b(m-)?[0-9a-f]{32}\b")
TIME = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:?\d\d|Z)?")
TDELTA = re.compile(r"\b\d+ days \d\d:\d\d:\d\d(\.\d+)?")


class Masker:
    def __init__(self, store: Path, code: Path | None) -> None:
        self.paths = [(str(store.resolve()), "<store>")] + ([(str(code.resolve()), "<code>")] if code else [])
        self.ids: dict[str, str] = {}

    def s(self, text: str) -> str:
        for p, label in self.paths:
            text = text.replace(p, label)
        text = HEX.sub(lambda m: self.ids.get(m[0], "<id>"), text)
        return TDELTA.sub("<duration>", TIME.sub("<time>", text))

    def any(self, x, key: str = ""):
        """Mask a JSON-like value: volatile keys -> V, strings scrubbed, floats rounded."""
        if key and VOLATILE_TAG.search(key):
            return V
        if isinstance(x, dict):
            return {str(k): self.any(v, str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [self.any(v) for v in x]
        if isinstance(x, float):
            return rnd(x)
        return self.s(x) if isinstance(x, str) else x


def rnd(v):
    return float(f"{v:.10g}") if isinstance(v, float) and v == v and abs(v) != float("inf") else v


def file_of(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def text_entry(path: Path, m: Masker) -> dict:
    text = path.read_text(errors="replace")
    if path.suffix == ".csv":  # Optuna's trials table: drop the time columns' values, keep the columns
        rows = list(csv.reader(io.StringIO(text)))
        cols = {i for i, h in enumerate(rows[0] if rows else []) if VOLATILE_CSV_COL.search(h)}
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(
            [[V if i in cols and n else c for i, c in enumerate(r)] for n, r in enumerate(rows)])
        text = buf.getvalue()
    text = m.s(text)
    out = {"sha256": hashlib.sha256(text.encode()).hexdigest()}
    if len(text) < 20000:  # one dump line per text line: a change shows as the lines that changed
        out["text"] = {f"{i:04d}": line for i, line in enumerate(text.splitlines(), 1)}
    return out


def artifacts(root: Path, m: Masker, seen: set[Path]) -> dict:
    out = {}
    for p in sorted(root.rglob("*")) if root.is_dir() else []:
        if not p.is_file() or "__pycache__" in p.parts:
            continue
        seen.add(p.resolve())
        rel = p.relative_to(root).as_posix()
        code = rel.startswith("code/") or "/code/" in rel
        out[m.s(rel)] = text_entry(p, m) if p.suffix in TEXT_EXT and not code and p.stat().st_size < 10**6 \
            else "<file>"
    return out


def dump_mlflow(store: Path, m: Masker, seen: set[Path]) -> dict:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    uri = f"sqlite:///{store.resolve()}/mlflow.db"
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def pages(fn, *a, **kw):
        token, items = None, []
        while True:
            page = fn(*a, page_token=token, **kw)
            items += list(page)
            token = page.token
            if not token:
                return items

    exps = pages(c.search_experiments, view_type=ViewType.ALL)
    runs = {e.experiment_id: pages(c.search_runs, [e.experiment_id], run_view_type=ViewType.ALL)
            for e in exps}
    names: dict[str, str] = {}
    for rs in runs.values():
        for r in sorted(rs, key=lambda r: (r.info.run_name or "", r.info.start_time or 0)):
            name = r.info.run_name or "<unnamed>"
            while name in names.values():
                name += "#"
            names[r.info.run_id] = name
    m.ids.update({k: f"<run:{v}>" for k, v in names.items()})
    models = pages(c.search_logged_models, experiment_ids=[e.experiment_id for e in exps])
    m.ids.update({lm.model_id: f"<model:{lm.name}@{names.get(lm.source_run_id)}>" for lm in models})
    out: dict = {"experiments": {}, "logged_models": {}, "registry": {}}
    for e in exps:
        ex = out["experiments"][e.name] = {"stage": e.lifecycle_stage, "tags": m.any(dict(e.tags)),
                                           "artifact_location": m.s(e.artifact_location or ""), "runs": {}}
        for r in runs[e.experiment_id]:
            d = r.data
            hist = {k: sorted([x.step, V if VOLATILE_METRIC.search(k) else rnd(x.value)]
                              for x in c.get_metric_history(r.info.run_id, k)) for k in d.metrics}
            ex["runs"][names[r.info.run_id]] = {
                "status": r.info.status, "stage": r.info.lifecycle_stage,
                "params": {k: m.s(v) for k, v in d.params.items()},
                "tags": {k: V if VOLATILE_TAG.search(k) else m.s(v) for k, v in d.tags.items()},
                "metrics": hist, "outputs": sorted(m.s(o.model_id) for o in (r.outputs.model_outputs or [])),
                "artifacts": artifacts(file_of(r.info.artifact_uri), m, seen)}
    for lm in models:
        out["logged_models"][m.s(lm.model_id)] = {
            "name": lm.name, "status": str(lm.status), "source_run": names.get(lm.source_run_id),
            "params": {k: m.s(v) for k, v in (lm.params or {}).items()}, "tags": m.any(dict(lm.tags or {})),
            "metrics": sorted([x.key, x.step, rnd(x.value)] for x in lm.metrics or []),
            "artifacts": artifacts(file_of(lm.artifact_location), m, seen)}
    for rm in pages(c.search_registered_models):
        vs = pages(c.search_model_versions, f"name='{rm.name}'")
        out["registry"][rm.name] = {"tags": m.any(dict(rm.tags)), "aliases": m.any(dict(rm.aliases or {})),
                                    "description": rm.description, "versions": {
            str(v.version): {"status": v.status, "stage": v.current_stage, "source_run": names.get(v.run_id),
                             "source": m.s(v.source or ""), "model_id": m.s(v.model_id or ""),
                             "tags": m.any(dict(v.tags)), "aliases": sorted(v.aliases or [])} for v in vs}}
    return out


def dump_optuna(store: Path, m: Masker) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{store.resolve()}/optuna.db"
    out = {}
    for name in sorted(optuna.get_all_study_names(storage)):
        st = optuna.load_study(study_name=name, storage=storage)
        out[name] = {"directions": [d.name for d in st.directions], "user_attrs": m.any(st.user_attrs),
                     "trials": {f"{t.number:04d}": {
                         "state": t.state.name, "params": {k: rnd(v) for k, v in t.params.items()},
                         "distributions": {k: repr(v) for k, v in t.distributions.items()},
                         "values": m.any(t.values), "user_attrs": m.any(t.user_attrs),
                         "system_attrs": m.any(t.system_attrs),
                         "intermediate_values": sorted([s, rnd(v)] for s, v in t.intermediate_values.items())}
                         for t in st.get_trials(deepcopy=False)}}
    return out


def flatten(x, path: tuple, lines: list[str]) -> None:
    if isinstance(x, dict) and x:
        for k in x:
            flatten(x[k], path + (str(k),), lines)
    else:
        lines.append(" | ".join(path) + " = " + json.dumps(x, sort_keys=True, ensure_ascii=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--code-dir", type=Path, help="a path to show as <code> (the cwd hpo ran in)")
    a = ap.parse_args(argv)
    m, seen = Masker(a.store, a.code_dir), set()
    data = {"mlflow": dump_mlflow(a.store, m, seen), "optuna": dump_optuna(a.store, m)}
    skip = {"mlflow.db", "optuna.db"}  # and their -wal / -shm files
    data["store_files"] = sorted(
        m.s(p.relative_to(a.store).as_posix()) for p in a.store.rglob("*")
        if p.is_file() and p.resolve() not in seen and p.name.split("-")[0] not in skip)
    lines: list[str] = []
    flatten(data, (), lines)
    a.out.write_text("\n".join(sorted(lines)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
