"""Studies as Ray Jobs: package a spec with its data, submit, follow, list, cancel.

The job runs ``python -m hpo run SPEC --executor ray`` on the cluster; the hpo package
itself travels in the job's runtime environment (``py_modules``), the spec and the data
files it names in its ``working_dir``. Nothing from outside the submitting folder is shipped:
paths and symbolic links that lead out of it are refused before any cluster is contacted.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hpo.errors import HpoError, SpecError
from hpo.redact import redact

SUBMITTED_BY = "hpo"


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:
        raise HpoError(f"cannot reach the Ray Jobs API at {redact(address)}: {redact(str(exc).splitlines()[0])}. "
                       "Check --address "
                       "(the dashboard port, usually 8265) and, for token auth, RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH") from None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


MAX_LISTED = 10  # problems listed one per line; the rest are counted


def _unshippable(src: Path, cwd: Path) -> list[str]:
    """Why each file or link under ``src`` must not be shipped (empty when all may).

    Every entry is checked, not only ``src``: a symbolic link whose target resolves outside
    ``cwd``, a dangling link, a link to a folder that contains it (the copy would never end),
    and anything that is not a regular file or folder (a FIFO would block the copy).
    """
    root = cwd.resolve()
    problems: list[str] = []
    seen: set[Path] = set()
    todo = [src]
    while todo:
        path = todo.pop()
        shown = path.relative_to(cwd) if path.is_relative_to(cwd) else path
        real = path.resolve()
        if path.is_symlink():
            target = os.readlink(path)
            if not real.exists():
                problems.append(f"{shown} is a symbolic link to {target}, which does not exist: remove the link, or "
                                "point it at a file inside the working directory")
                continue
            if not _inside(real, root):
                problems.append(f"{shown} is a symbolic link to {real}, outside the working directory {root}, so the "
                                "job would ship that file: copy the file into the folder, or remove the link")
                continue
            if real.is_dir() and _inside(path.parent, real):
                problems.append(f"{shown} is a symbolic link to {target}, a folder that contains the link (a loop): "
                                "remove the link")
                continue
        if real.is_dir():
            if real not in seen:  # two links to one folder inside: check it once
                seen.add(real)
                todo.extend(sorted(path.iterdir(), reverse=True))
        elif not real.is_file():
            problems.append(f"{shown} is not a regular file (a FIFO, socket or device): remove it from the folder")
    return problems


def package(spec_path: str | Path, workdir: Path, cwd: Path | None = None) -> str:
    """Copy the spec and the data it names into ``workdir``; returns the spec's path inside it.

    Raises SpecError (nothing copied) when a path escapes the working directory (a job must not
    read arbitrary files of the submitting machine) or a file is missing. Every file under
    ``data.path`` is checked, and a symbolic link whose target is outside the working directory,
    a dangling link or a special file is refused, each named with where it points. Refused
    rather than skipped: a skipped file would surface later, on the cluster, as missing data
    (or silently as less data), while the user who made the link can copy the file in or
    remove the link in a moment. Links that stay inside the working directory are shipped as
    the files they point to.
    """
    from hpo.spec import load_spec

    cwd = cwd or Path.cwd()
    spec_file = Path(spec_path)
    spec = load_spec(spec_file)
    if not _inside(spec_file, cwd):
        raise SpecError([("", f"submit from a folder that contains the spec (the spec is outside {cwd})")],
                        str(spec_path))
    rel_spec = spec_file.resolve().relative_to(cwd.resolve())
    src = data = None
    if spec.data.path:
        data = Path(spec.data.path)
        if data.is_absolute() or not _inside(cwd / data, cwd):
            raise SpecError([("data.path", f"must be a path inside the working directory to be shipped with the job "
                                           f"(got {spec.data.path!r})")], str(spec_path))
        src = cwd / data
        if src.exists() or src.is_symlink():
            problems = _unshippable(src, cwd)
            if problems:
                more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
                raise SpecError([("data.path", p) for p in problems[:MAX_LISTED] + more], str(spec_path))
        elif not spec.data.download:
            raise SpecError([("data.path", f"{spec.data.path} does not exist; nothing to ship")], str(spec_path))
    code = _code_to_ship(spec, cwd, str(spec_path))
    (workdir / rel_spec).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(spec_file, workdir / rel_spec)
    for folder in code:  # the user's factory modules, at the same place relative to the spec
        dst = workdir / folder.relative_to(cwd.resolve())
        dst.parent.mkdir(parents=True, exist_ok=True)
        if folder.is_dir():
            shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy2(folder, dst)
    if src is not None and data is not None and src.exists():
        dst = workdir / data
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    return str(rel_spec)


def _code_to_ship(spec: Any, cwd: Path, spec_file: str) -> list[Path]:
    """The local module files / package folders of the spec's ``factory:`` code, to travel with the job
    (installed code is not shipped: it must be installed on the cluster too). SpecError when one lies
    outside the working directory or holds a link that leaves it."""
    from hpo.usercode import code_folder, load_target

    root, folders = cwd.resolve(), []
    for key, target, group in spec.user_code():
        folder = code_folder(load_target(target, spec_path=spec.path, group=group))
        if folder is None:
            continue
        if not _inside(folder, root):
            raise SpecError([(key, f"{target} comes from {folder}, outside the working directory {root}: a job ships "
                                   "only files below the folder it is submitted from; move the module inside it, or "
                                   "install its package on the cluster")], spec_file)
        problems = _unshippable(folder, cwd)
        if problems:
            raise SpecError([(key, p) for p in problems[:MAX_LISTED]], spec_file)
        folders.append(folder)
    return folders


def check_tracking_uri(uri: str) -> None:
    """A job needs a store the cluster can reach: an HTTP server, or an absolute sqlite path."""
    from hpo.tracking import check_reachable, sqlite_path

    db = sqlite_path(uri)
    if db is not None:
        if not db.is_absolute():
            raise HpoError(f"--tracking-uri {redact(uri)}: a submitted study needs an absolute sqlite path "
                           "(sqlite:////abs/path/mlflow.db) or, on a real cluster, an MLflow tracking server URL")
        return
    if not uri.startswith(("http://", "https://")):
        raise HpoError(f"--tracking-uri {redact(uri)}: use an MLflow tracking server (http://host:5000) for a cluster")
    try:
        check_reachable(uri)
    except HpoError as exc:
        # the URI is used inside the cluster (e.g. http://mlflow:5000), which may not resolve here;
        # the job checks it again before its first trial. The reason is shown: refused credentials are
        # worth fixing before the job starts
        print(f"note: from this machine, {exc}; the job checks it again from the cluster", file=sys.stderr)


def submit_study(spec_path: str, *, address: str, tracking_uri: str | None = None, n_trials: int | None = None,
                 resume: bool = False) -> str:
    """Submit ``spec_path`` as a Ray Job; returns the job id."""
    import shlex

    import hpo
    from hpo.spec import load_spec

    spec = load_spec(spec_path)
    uri = tracking_uri or spec.tracking.uri
    check_tracking_uri(uri)
    workdir = Path(tempfile.mkdtemp(prefix="hpo-job-"))
    try:
        # what is shipped is checked before any cluster is contacted: a refused folder needs no cluster
        rel = package(spec_path, workdir)
        client = _client(address)
        cmd = ["python", "-m", "hpo", "run", rel, "--executor", "ray", "--tracking-uri", uri, "--quiet"]
        if n_trials:
            cmd += ["--n-trials", str(n_trials)]
        if resume:
            cmd.append("--resume")
        runtime_env: dict[str, Any] = {
            "working_dir": str(workdir),
            "py_modules": [str(Path(hpo.__file__).parent)],
            # MLflow probes the working directory for a uv project when logging a model; Ray may already
            # have recycled a job's working_dir on the head by then
            "env_vars": {"PYTHONUNBUFFERED": "1", "MLFLOW_UV_AUTO_DETECT": "false"},
        }
        metadata = {"submitted_by": SUBMITTED_BY, "study": spec.name, "spec": rel}
        # Ray may recycle the job's working_dir on the head while the driver still runs (its trials live on
        # other nodes), and torch / MLflow read the working directory late: run from a private copy of it
        entrypoint = ('set -e; d="$(mktemp -d -t hpo-job-XXXXXX)"; cp -R . "$d"; cd "$d"; '
                      + "exec " + shlex.join(cmd))
        deadline = time.monotonic() + 180
        while True:
            try:
                return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata)
            except RuntimeError as exc:
                # a head that just started answers before its job agent is up: wait for it
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise HpoError(f"the Ray cluster at {redact(address)} refused the job: "
                                   f"{redact(str(exc).splitlines()[0])}") from None
                time.sleep(2)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def follow(address: str, job_id: str) -> str:
    """Stream a job's logs to stdout until it ends; returns its final status."""
    import asyncio
    import sys

    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())
    return str(client.get_job_status(job_id).value)


def list_jobs(address: str, include_all: bool = False) -> list[dict[str, str]]:
    """Jobs on the cluster (hpo's unless ``include_all``), newest first."""
    import datetime as dt

    jobs = []
    for j in _client(address).list_jobs():
        meta = j.metadata or {}
        if not include_all and meta.get("submitted_by") != SUBMITTED_BY:
            continue
        started = dt.datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M") if j.start_time else ""
        jobs.append({"id": j.submission_id or j.job_id or "", "status": str(j.status.value),
                     "study": meta.get("study", ""), "spec": meta.get("spec", ""), "started": started,
                     "message": (j.message or "")[:80], "_t": j.start_time or 0})
    jobs.sort(key=lambda j: j["_t"], reverse=True)
    for j in jobs:
        del j["_t"]
    return jobs


def cancel(address: str, job_id: str) -> bool:
    """Stop a job; returns False if it had already ended."""
    client = _client(address)
    try:
        return bool(client.stop_job(job_id))
    except RuntimeError as exc:
        shown = redact(address)
        raise HpoError(f"no job {job_id} at {shown}: {redact(str(exc))}; list them with hpo jobs --address {shown}") from None
