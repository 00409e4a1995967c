"""The benchmarks keep working (their --quick size); no timing is asserted."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_quickstart_benchmark_runs():
    from benchmarks import quickstart

    summary = quickstart.main(["--quick"])
    assert 0 < summary["hpo"]["test"] <= 1 and 0 < summary["gridsearchcv"]["test"] <= 1
    assert summary["hpo"]["wall_s"] > 0
