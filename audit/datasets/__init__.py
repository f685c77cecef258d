"""Embedded data sets: UCI Adult (compressed, CC BY 4.0) and scikit-learn's digits."""

from __future__ import annotations

import gzip
import hashlib
import io
from importlib import resources

import numpy as np
import pandas as pd

ADULT_COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
]
BUILTIN = ("adult", "digits")


def _read_adult_file(name: str, sha: hashlib._Hash) -> pd.DataFrame:
    raw = gzip.decompress(resources.files(__package__).joinpath(f"{name}.gz").read_bytes())
    sha.update(raw)
    frame = pd.read_csv(
        io.BytesIO(raw),
        header=None,
        names=ADULT_COLUMNS,
        skipinitialspace=True,
        na_values=["?"],
        comment="|",  # adult.test opens with a '|1x3 Cross validator' line
    )
    frame = frame.dropna(how="all")
    frame["income"] = frame["income"].str.rstrip(".")
    return frame


def load_adult() -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Return Adult's own train and test frames and the SHA-256 of both files as read."""
    sha = hashlib.sha256()
    train = _read_adult_file("adult.data", sha)
    test = _read_adult_file("adult.test", sha)
    return train, test, sha.hexdigest()


def load_digits_images() -> tuple[np.ndarray, np.ndarray, str]:
    """Return scikit-learn's 8x8 digits as float32 images in [0, 1] (N, 1, 8, 8), labels, SHA-256."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    sha = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    return images, labels, sha
