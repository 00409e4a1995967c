#!/usr/bin/env bash
# Run two fixed-seed studies with the hpo code in CODE_DIR, each into a fresh store, and dump each store
# with tools/dump_store.py into OUT_DIR/iris_grid.txt and OUT_DIR/digits_mlp.txt (diff two OUT_DIRs).
#
#   tools/run_dumps.sh CODE_DIR OUT_DIR
#
# Env: PYTHON (default /work/main/.venv/bin/python), DIGITS_TRIALS (default: the spec's 16), KEEP_STORES=1
# keeps the temporary stores (their folder is printed). Runs from CODE_DIR (so the spec paths resolve there
# and the git-commit tag is recorded, masked by the dump), one thread, fixed hash seed, UTC.
set -euo pipefail

if [ $# -ne 2 ]; then echo "usage: $0 CODE_DIR OUT_DIR" >&2; exit 2; fi
CODE_DIR=$(cd "$1" && pwd -P)
mkdir -p "$2"
OUT_DIR=$(cd "$2" && pwd -P)
TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
PYTHON=${PYTHON:-/work/main/.venv/bin/python}

if [ ! -x "$PYTHON" ] || ! "$PYTHON" -c "import mlflow, optuna, torch, yaml" 2>/dev/null; then
  echo "waiting for the venv ($PYTHON, /tmp/venv.log) ..." >&2
  for _ in $(seq 180); do [ "$(tail -n 1 /tmp/venv.log 2>/dev/null)" = "done" ] && break; sleep 10; done
  "$PYTHON" -c "import mlflow, optuna, torch, yaml" || { echo "no usable venv at $PYTHON" >&2; exit 1; }
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/hpo_dumps.XXXXXX")
if [ "${KEEP_STORES:-0}" = 1 ]; then echo "stores in $TMP" >&2; else trap 'rm -rf "$TMP"' EXIT; fi

export PYTHONPATH="$CODE_DIR" PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1 TZ=UTC
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
export MPLBACKEND=Agg MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
unset MLFLOW_TRACKING_URI MLFLOW_REGISTRY_URI HPO_DEBUG RAY_ADDRESS

study() {  # study NAME SPEC [hpo run flags...]
  local name=$1 spec=$2 store="$TMP/$1"; shift 2
  mkdir -p "$store"
  local t0=$SECONDS
  (cd "$CODE_DIR" && "$PYTHON" -m hpo run "$CODE_DIR/$spec" --tracking-uri "sqlite:///$store/mlflow.db" \
      --quiet "$@") > "$TMP/$name.log" 2>&1 ||
    { echo "hpo run $spec failed:" >&2; tail -n 30 "$TMP/$name.log" >&2; exit 1; }
  echo "$name: hpo run took $((SECONDS - t0)) s" >&2
  "$PYTHON" "$TOOLS/dump_store.py" "$store" "$OUT_DIR/$name.txt" --code-dir "$CODE_DIR"
  echo "$name: $(wc -l < "$OUT_DIR/$name.txt") lines -> $OUT_DIR/$name.txt" >&2
}

study iris_grid search_spaces/iris_grid.yaml
study digits_mlp search_spaces/digits_mlp.yaml ${DIGITS_TRIALS:+--n-trials "$DIGITS_TRIALS"}
