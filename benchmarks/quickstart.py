"""The quick-start study against scikit-learn's classic GridSearchCV(MLPClassifier) on the same split.

    python -m benchmarks.quickstart [--repeats 3] [--quick]

Both see exactly the same train/test split of digits (hpo's loader, seed 0). Prints wall
time, best CV accuracy and test accuracy of each, per repeat and as medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "search_spaces" / "digits_mlp.yaml"


def run_hpo(n_trials: int | None) -> dict:
    import hpo

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = hpo.run(SPEC, tracking_uri=f"sqlite:///{tmp}/mlflow.db", n_trials=n_trials)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "best_cv": result.best_value, "test": result.test_metrics["accuracy"]}


def run_gridsearch(quick: bool) -> dict:
    from sklearn.model_selection import GridSearchCV
    from sklearn.neural_network import MLPClassifier

    from hpo.data import load_dataset

    ds = load_dataset("digits", seed=0)
    x_tr = ds.x_train.reshape(len(ds.x_train), -1)
    x_te = ds.x_test.reshape(len(ds.x_test), -1)
    grid = {"hidden_layer_sizes": [(5,), (20,), (50,), (100,), (150,), (200,)], "alpha": [0.001, 0.01, 1, 2]}
    if quick:
        grid = {"hidden_layer_sizes": [(20,)], "alpha": [0.01, 1]}
    t0 = time.perf_counter()
    search = GridSearchCV(MLPClassifier(solver="lbfgs", random_state=0), grid, cv=5)
    search.fit(x_tr, ds.y_train)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "best_cv": float(search.best_score_),
            "test": float(np.mean(search.predict(x_te) == ds.y_test))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2 trials / a 2-point grid, once: keeps the script working")
    args = p.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    rows: dict[str, list[dict]] = {"hpo": [], "gridsearchcv": []}
    for _ in range(repeats):
        rows["hpo"].append(run_hpo(2 if args.quick else None))
        rows["gridsearchcv"].append(run_gridsearch(args.quick))
    summary = {}
    for name, rs in rows.items():
        summary[name] = {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "best_cv", "test")}
        summary[name]["wall_s_range"] = [min(r["wall_s"] for r in rs), max(r["wall_s"] for r in rs)]
    summary["ratio_wall_hpo_over_gridsearchcv"] = summary["hpo"]["wall_s"] / summary["gridsearchcv"]["wall_s"]
    print(json.dumps({"runs": rows, "median": summary}, indent=2))
    return summary


if __name__ == "__main__":
    main()
