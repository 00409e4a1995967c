"""Data sets for hpo: scikit-learn's bundled sets, MNIST-style IDX files, CIFAR; the user's CSV,
parquet and npz files and data factories (``data.factory``).

``load_dataset(name, ...)`` returns a :class:`Dataset` with a train/test split; every
problem is reported as :class:`hpo.errors.DataError`. ``load_spec_dataset(spec)`` loads a
study spec's dataset and names the spec file, the key and the resolved path in its errors. Importing this package is cheap:
pandas, scikit-learn and mlxtend are imported by the loaders that need them.
"""

from __future__ import annotations

from hpo.data._arrays import dataset_from_arrays
from hpo.data._dataset import DataKeyError, Dataset
from hpo.data._download import MIRROR_ENV, SOURCES, Source, download
from hpo.data._from_spec import load_spec_dataset
from hpo.data._idx import read_idx
from hpo.data._registry import DATASETS, DOWNLOADABLE, FILE_DATASETS, dataset_task, load_dataset

__all__ = [
    "DATASETS",
    "DOWNLOADABLE",
    "FILE_DATASETS",
    "MIRROR_ENV",
    "SOURCES",
    "DataKeyError",
    "Dataset",
    "Source",
    "dataset_from_arrays",
    "dataset_task",
    "download",
    "load_dataset",
    "load_spec_dataset",
    "read_idx",
]
