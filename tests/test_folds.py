from __future__ import annotations

import numpy as np
import pytest

from hpo.errors import DataError
from hpo.folds import make_folds


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.choice(3, size=301, p=[0.6, 0.3, 0.1])


def test_folds_are_disjoint_and_cover(labels):
    folds = make_folds(labels, 5, seed=0, stratified=True)
    assert len(folds) == 5
    vals = np.concatenate([va for _, va in folds])
    assert sorted(vals.tolist()) == list(range(len(labels)))  # every example validated exactly once
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert len(tr) + len(va) == len(labels)


def test_folds_are_stratified(labels):
    overall = np.bincount(labels) / len(labels)
    for _, va in make_folds(labels, 5, seed=0, stratified=True):
        share = np.bincount(labels[va], minlength=3) / len(va)
        assert np.abs(share - overall).max() < 0.03


def test_folds_reproducible_from_seed(labels):
    a = make_folds(labels, 4, seed=7, stratified=True)
    b = make_folds(labels, 4, seed=7, stratified=True)
    c = make_folds(labels, 4, seed=8, stratified=True)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_regression_folds_use_kfold():
    y = np.linspace(0, 1, 50).astype(np.float32)
    folds = make_folds(y, 5, seed=0, stratified=False)
    assert [len(va) for _, va in folds] == [10] * 5


def test_more_folds_than_smallest_class_is_a_data_error():
    y = np.array([0] * 20 + [1] * 3)
    with pytest.raises(DataError, match=r"cv.folds: 5 stratified folds.*class 1 has 3"):
        make_folds(y, 5, seed=0, stratified=True)


def test_more_folds_than_examples_is_a_data_error():
    with pytest.raises(DataError, match="at least 5 training examples"):
        make_folds(np.arange(3, dtype=np.float32), 5, seed=0, stratified=False)
