#!/bin/sh
# The rest of run_all.sh at the reduced sizes reported in BENCHMARKS.md (after peers).
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
R=benchmarks/results
$PY -m benchmarks.scale --trials 1000 --wal-trials 300 > $R/scale.json 2> $R/scale.log
$PY -m benchmarks.search_efficiency --seeds 2 --budget 8 --prune-budget 8 > $R/search_efficiency.json 2> $R/search_efficiency.log
$PY -m benchmarks.gpu_throughput --device cpu --n 500 --repeats 3 > $R/gpu_throughput.json 2> $R/gpu_throughput.log
$PY -m benchmarks.gpu_throughput --device cpu --n 500 --models resnet20,cnn --concurrent 1,2,4 > $R/gpu_throughput_concurrent.json 2> $R/gpu_throughput_concurrent.log
