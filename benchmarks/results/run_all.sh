#!/bin/sh
# The full runs reported in BENCHMARKS.md, one after another (never two at once), at the sizes
# used there (scale's WAL experiment, search_efficiency and the CPU throughput runs are reduced
# to keep the whole set near an hour on 2 shared cores; see each section).
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
R=benchmarks/results
$PY -m benchmarks.overhead --repeats 3 > $R/overhead.json 2> $R/overhead.log
$PY -m benchmarks.peers --repeats 2 > $R/peers.json 2> $R/peers.log
$PY -m benchmarks.scale --trials 1000 > $R/scale.json 2> $R/scale.log
$PY -m benchmarks.scale --trials 1000 --storage journal > $R/scale_journal.json 2> $R/scale_journal.log
$PY -m benchmarks.optuna_stores --trials 1000 --repeats 3 > $R/optuna_stores.json 2> $R/optuna_stores.log
$PY -m benchmarks.search_efficiency --seeds 2 --budget 8 --prune-budget 8 > $R/search_efficiency.json 2> $R/search_efficiency.log
$PY -m benchmarks.gpu_throughput --device cpu --n 500 --repeats 3 > $R/gpu_throughput.json 2> $R/gpu_throughput.log
$PY -m benchmarks.gpu_throughput --device cpu --n 500 --models resnet20,cnn --concurrent 1,2,4 > $R/gpu_throughput_concurrent.json 2> $R/gpu_throughput_concurrent.log
