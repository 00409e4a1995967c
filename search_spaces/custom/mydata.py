"""An example data factory for hpo: two interleaved half-moons with noise (generated, offline).

hpo calls ``load(**data.args)`` and expects ``(x, y)`` (or ``(x_train, y_train, x_test, y_test)``):
here ``x`` is (N, 2) float32 and ``y`` the class labels 0/1; hpo splits off ``data.test_size``.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_moons


def load(n: int = 600, noise: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of scikit-learn's two moons with Gaussian ``noise``."""
    x, y = make_moons(n_samples=n, noise=noise, random_state=seed)
    return x.astype(np.float32), y.astype(np.int64)
