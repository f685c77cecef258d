"""Tabular and image data: loading, schema, splits, and preprocessing fitted on the training split only."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from audit import datasets
from audit.config import RunConfig
from audit.errors import AuditError

log = logging.getLogger(__name__)

MISSING = "<missing>"
NA_VALUES = ["?"]  # UCI's marker, beside pandas' own (empty, NA, NaN, ...)
MAX_GROUPS_BEFORE_BINNING = 10  # a numeric sensitive column with more values is binned into quartiles


@dataclass
class Split:
    """One split held as tensors; ``groups`` holds the sensitive features as strings, row-aligned."""

    x: torch.Tensor
    y: torch.Tensor
    groups: pd.DataFrame

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TabularPreprocessor:
    """Median imputation + standardisation for numeric columns, one-hot for categorical ones."""

    numeric: list[str]
    categorical: list[str]
    medians: list[float] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    categories: list[list[str]] = field(default_factory=list)

    @classmethod
    def fit(cls, frame: pd.DataFrame, *, numeric: list[str], categorical: list[str]) -> TabularPreprocessor:
        """Fit on the training rows only."""
        values = frame[numeric].astype("float64")
        medians = values.median().fillna(0.0)
        filled = values.fillna(medians)
        stds = filled.std(ddof=0).replace(0.0, 1.0).fillna(1.0)
        categories = [sorted(_as_category(frame[col]).unique().tolist()) for col in categorical]
        return cls(numeric, categorical, medians.tolist(), filled.mean().tolist(), stds.tolist(), categories)

    @property
    def feature_names(self) -> list[str]:
        """Names of the model's input columns, numeric first."""
        names = list(self.numeric)
        for col, cats in zip(self.categorical, self.categories):
            names.extend(f"{col}={cat}" for cat in cats)
        return names

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the model's float32 input matrix for these rows (vectorised, no per-row Python)."""
        missing = [c for c in self.numeric + self.categorical if c not in frame.columns]
        if missing:
            raise AuditError(f"data lacks column(s) {', '.join(missing)} that the model was trained on")
        n = len(frame)
        blocks = []
        if self.numeric:
            try:
                values = frame[self.numeric].astype("float64").to_numpy()
            except (TypeError, ValueError):
                bad = [
                    c
                    for c in self.numeric
                    if pd.to_numeric(frame[c], errors="coerce").isna().sum() > frame[c].isna().sum()
                ]
                example = (
                    next(
                        (
                            v
                            for v in frame[bad[0]]
                            if pd.isna(pd.to_numeric(v, errors="coerce")) and not pd.isna(v)
                        ),
                        None,
                    )
                    if bad
                    else None
                )
                raise AuditError(
                    f"numeric column(s) {', '.join(bad or self.numeric)} hold non-numeric values (e.g. {example!r}); "
                    "expected numbers, as in the training data"
                ) from None
            values = np.where(np.isnan(values), np.asarray(self.medians), values)
            blocks.append((values - np.asarray(self.means)) / np.asarray(self.stds))
        for col, cats in zip(self.categorical, self.categories):
            codes = pd.Categorical(_as_category(frame[col]), categories=cats).codes
            onehot = np.zeros((n, len(cats)))
            known = codes >= 0
            onehot[np.flatnonzero(known), codes[known]] = 1.0
            blocks.append(onehot)
        return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((n, 0), np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-able state (saved inside model.pt)."""
        return dict(
            numeric=self.numeric,
            categorical=self.categorical,
            medians=self.medians,
            means=self.means,
            stds=self.stds,
            categories=self.categories,
        )

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TabularPreprocessor:
        """Rebuild from ``to_dict``'s output."""
        return cls(**state)


@dataclass
class Dataset:
    """A data set ready for training: tensors per split plus everything the audit needs to know."""

    name: str
    kind: str  # "tabular" or "image"
    train: Split
    val: Split
    test: Split
    classes: list[str]
    target: str
    sensitive: list[str]
    input_shape: tuple[int, ...]
    feature_names: list[str]
    fingerprint: str
    split_source: str
    # Which input features an attacker may perturb, and the range each took in training.
    perturbable: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    preprocessor: TabularPreprocessor | None = None
    missing_counts: dict[str, int] = field(default_factory=dict)
    positive_label: str | None = None
    group_bins: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Number of target classes."""
        return len(self.classes)

    @property
    def positive_index(self) -> int | None:
        """Index of the positive class for a binary target, else None."""
        return self.classes.index(self.positive_label) if self.positive_label is not None else None

    def schema(self) -> dict[str, Any]:
        """Return what is needed to rebuild this data's preprocessing for a saved model."""
        return dict(
            name=self.name,
            kind=self.kind,
            classes=self.classes,
            target=self.target,
            sensitive=self.sensitive,
            input_shape=list(self.input_shape),
            positive_label=self.positive_label,
            group_bins=self.group_bins,
            preprocessor=self.preprocessor.to_dict() if self.preprocessor else None,
            perturbable=self.perturbable.tolist(),
            lower=self.lower.tolist(),
            upper=self.upper.tolist(),
        )


def _as_category(column: pd.Series) -> pd.Series:
    return column.astype("string").fillna(MISSING).astype(str)


def read_table(path: str) -> tuple[pd.DataFrame, str]:
    """Read a CSV or Parquet file; return the frame and the SHA-256 of its bytes."""
    file = Path(path)
    if not file.is_file():
        raise AuditError(
            f"data file {path} does not exist; expected a .csv or .parquet file, or a built-in: {', '.join(datasets.BUILTIN)}"
        )
    raw = file.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    suffix = file.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(file)
        elif suffix in (".csv", ".tsv", ".txt"):
            frame = pd.read_csv(
                file, sep="\t" if suffix == ".tsv" else ",", skipinitialspace=True, na_values=NA_VALUES
            )
        else:
            raise AuditError(
                f"data file {path} has an unknown type {suffix!r}; expected .csv, .tsv or .parquet"
            )
    except pd.errors.EmptyDataError:
        raise AuditError(f"data file {path} is empty; expected a header row and data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        if isinstance(exc, AuditError):
            raise
        raise AuditError(f"data file {path} could not be parsed: {str(exc).splitlines()[0]}") from None
    if len(frame) == 0:
        raise AuditError(f"data file {path} has no data rows; expected a header row and data rows")
    return frame, digest


def _encode_target(
    frame: pd.DataFrame, target: str, source: str, classes: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    if target not in frame.columns:
        raise AuditError(
            f"{source} has no target column {target!r}; columns are: {', '.join(map(str, frame.columns))}"
        )
    column = frame[target]
    n_missing = int(column.isna().sum())
    if n_missing:
        raise AuditError(
            f"target column {target!r} in {source} has {n_missing} missing value(s); expected every row labelled"
        )
    labels = column.astype(str).str.strip()
    if classes is None:
        uniques = pd.unique(column)
        try:
            uniques = sorted(uniques)
        except TypeError:
            pass
        classes = [str(v).strip() for v in uniques]
        if len(classes) < 2:
            raise AuditError(
                f"target column {target!r} in {source} has a single value {classes[0]!r}; expected at least two classes"
            )
    codes = pd.Categorical(labels, categories=classes).codes
    if (codes < 0).any():
        unseen = sorted(set(labels[codes < 0]))[:5]
        raise AuditError(
            f"target column {target!r} in {source} has value(s) {unseen} the model never saw; expected {classes}"
        )
    return codes.astype(np.int64), classes


def group_frame(frame: pd.DataFrame, sensitive: list[str], bins: dict[str, list[float]]) -> pd.DataFrame:
    """Sensitive columns as group labels (strings), numeric ones cut into the given bins."""
    out = {}
    for col in sensitive:
        column = frame[col]
        if col in bins:
            edges = bins[col]
            labels = [f"[{_fmt(lo)}, {_fmt(hi)})" for lo, hi in zip(edges[:-1], edges[1:])]
            cut = pd.cut(
                column.astype(float), bins=[-np.inf] + edges[1:-1] + [np.inf], labels=labels, right=False
            )
            out[col] = cut.astype("string").fillna(MISSING).astype(str).to_numpy()
        else:
            out[col] = _as_category(column).to_numpy()
    return pd.DataFrame(out)


def _fmt(value: float) -> str:
    return f"{value:g}"


def sensitive_bins(train: pd.DataFrame, sensitive: list[str]) -> dict[str, list[float]]:
    """Quantile bin edges, from the training rows, for numeric sensitive columns with many values."""
    bins = {}
    for col in sensitive:
        column = train[col]
        if (
            pd.api.types.is_numeric_dtype(column)
            and not pd.api.types.is_bool_dtype(column)
            and column.nunique() > MAX_GROUPS_BEFORE_BINNING
        ):
            edges = np.unique(np.quantile(column.dropna().astype(float), [0, 0.25, 0.5, 0.75, 1.0]))
            bins[col] = [float(e) for e in edges]
    return bins


def check_sensitive(frame: pd.DataFrame, sensitive: list[str], source: str) -> None:
    """Refuse a missing sensitive column, or one with a single group (AuditError naming it)."""
    for col in sensitive:
        if col not in frame.columns:
            raise AuditError(
                f"{source} has no sensitive column {col!r}; columns are: {', '.join(map(str, frame.columns))}"
            )
        n_values = frame[col].nunique(dropna=False)
        if n_values < 2:
            raise AuditError(
                f"sensitive column {col!r} in {source} has a single value ({frame[col].iloc[0]!r}); "
                "expected at least two groups to compare"
            )


def _feature_columns(frame: pd.DataFrame, config: RunConfig, target: str) -> tuple[list[str], list[str]]:
    for col in config.categorical + config.numeric + config.drop_columns:
        if col not in frame.columns:
            raise AuditError(
                f"column {col!r} named by --categorical/--numeric/--drop-columns is not in the data"
            )
    excluded = {target, *config.drop_columns}
    if config.drop_sensitive:
        excluded.update(config.sensitive)
    numeric, categorical = [], []
    for col in frame.columns:
        if col in excluded:
            continue
        column = frame[col]
        is_number = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        if col in config.categorical or (not is_number and col not in config.numeric):
            categorical.append(col)
        else:
            if not is_number and pd.to_numeric(column, errors="coerce").isna().sum() > column.isna().sum():
                raise AuditError(f"column {col!r} was declared numeric but holds non-numeric values")
            numeric.append(col)
    if not numeric and not categorical:
        raise AuditError("no feature columns are left after removing the target and dropped columns")
    return numeric, categorical


def _stratified_split(n: int, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(n)
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    return train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)


def _tabular_bounds(x_train: np.ndarray, n_numeric: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = x_train.shape[1]
    mask = torch.zeros(width, dtype=torch.bool)
    mask[:n_numeric] = True
    lower = torch.from_numpy(x_train.min(axis=0)) if len(x_train) else torch.zeros(width)
    upper = torch.from_numpy(x_train.max(axis=0)) if len(x_train) else torch.ones(width)
    return mask, lower.float(), upper.float()


def _to_split(x: np.ndarray, y: np.ndarray, groups: pd.DataFrame) -> Split:
    return Split(
        torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), groups.reset_index(drop=True)
    )


def load_dataset(config: RunConfig, *, schema: dict[str, Any] | None = None) -> Dataset:
    """Load the data a run names, split it, and fit preprocessing on the training split only.

    With ``schema`` (from a saved model), reuse its preprocessing: built-in data gets the same
    splits the model was trained with; a user's file becomes one evaluation split.
    """
    if config.data == "digits":
        return _load_digits(config)
    if config.data == "adult":
        train_frame, test_frame, digest = datasets.load_adult()
        target = config.target or "income"
        return _build_tabular(
            config, "adult", train_frame, test_frame, digest, target, "adult's own train/test split", schema
        )
    frame, digest = read_table(config.data)
    if not config.target and not schema:
        raise AuditError(
            f"--target is required for {config.data}; expected one of its columns: {', '.join(map(str, frame.columns))}"
        )
    target = config.target or schema["target"]
    if schema is not None:
        return _build_evaluation_only(config, frame, digest, target, schema)
    return _build_tabular(
        config, Path(config.data).stem, frame, None, digest, target, "stratified split from --seed", None
    )


MIN_ROWS_PER_CLASS = 10  # so that train, validation and test each hold every class (at the default fractions)


def _build_tabular(
    config: RunConfig,
    name: str,
    frame: pd.DataFrame,
    test_frame: pd.DataFrame | None,
    digest: str,
    target: str,
    split_source: str,
    schema: dict[str, Any] | None,
) -> Dataset:
    source = config.data
    y_all, classes = _encode_target(frame, target, source, schema["classes"] if schema else None)
    rarest = int(np.bincount(y_all, minlength=len(classes)).min())
    if rarest < MIN_ROWS_PER_CLASS:
        raise AuditError(
            f"{source} has {len(frame)} rows and its rarest target class only {rarest}; expected at least "
            f"{MIN_ROWS_PER_CLASS} rows of every class of {target!r} to split into train, validation and test"
        )
    check_sensitive(frame, config.sensitive, source)
    positive = _positive_label(config, classes, target)
    notes: list[str] = []
    if test_frame is None:
        rest, test_idx = _stratified_split(len(frame), y_all, config.test_fraction, config.seed)
        test_frame, y_test = frame.iloc[test_idx], y_all[test_idx]
        frame, y_all = frame.iloc[rest], y_all[rest]
    else:
        y_test, _ = _encode_target(test_frame, target, source, classes)
    train_idx, val_idx = _stratified_split(len(frame), y_all, config.val_fraction, config.seed)
    train_frame, val_frame = frame.iloc[train_idx], frame.iloc[val_idx]
    if schema is None:
        numeric, categorical = _feature_columns(frame, config, target)
        pre = TabularPreprocessor.fit(train_frame, numeric=numeric, categorical=categorical)
        bins = sensitive_bins(train_frame, config.sensitive)
    else:
        pre = TabularPreprocessor.from_dict(schema["preprocessor"])
        bins = {k: v for k, v in schema.get("group_bins", {}).items() if k in config.sensitive}
    for col, edges in bins.items():
        notes.append(
            f"numeric sensitive column {col!r} was grouped into quartile bins {edges} from the training split"
        )
    for col, cats in zip(pre.categorical, pre.categories):
        if len(cats) > 200:
            notes.append(
                f"categorical column {col!r} has {len(cats)} values; consider dropping it (--drop-columns) if it is an identifier"
            )
    missing = {
        str(c): int(v)
        for c, v in pd.concat([frame, test_frame])[pre.numeric + pre.categorical].isna().sum().items()
        if v
    }
    x_train = pre.transform(train_frame)
    mask, lower, upper = _tabular_bounds(x_train, len(pre.numeric))
    return Dataset(
        name=name,
        kind="tabular",
        train=_to_split(x_train, y_all[train_idx], group_frame(train_frame, config.sensitive, bins)),
        val=_to_split(
            pre.transform(val_frame), y_all[val_idx], group_frame(val_frame, config.sensitive, bins)
        ),
        test=_to_split(pre.transform(test_frame), y_test, group_frame(test_frame, config.sensitive, bins)),
        classes=classes,
        target=target,
        sensitive=list(config.sensitive),
        input_shape=(x_train.shape[1],),
        feature_names=pre.feature_names,
        fingerprint=digest,
        split_source=split_source,
        perturbable=mask,
        lower=lower,
        upper=upper,
        preprocessor=pre,
        missing_counts=missing,
        positive_label=positive,
        group_bins=bins,
        notes=notes,
    )


def _build_evaluation_only(
    config: RunConfig, frame: pd.DataFrame, digest: str, target: str, schema: dict[str, Any]
) -> Dataset:
    """A user's file audited against a saved model: every row is evaluation data; no training rows."""
    y, classes = _encode_target(frame, target, config.data, schema["classes"])
    check_sensitive(frame, config.sensitive, config.data)
    pre = TabularPreprocessor.from_dict(schema["preprocessor"])
    bins = {k: v for k, v in schema.get("group_bins", {}).items() if k in config.sensitive}
    bins.update({k: v for k, v in sensitive_bins(frame, config.sensitive).items() if k not in bins})
    x = pre.transform(frame)
    empty = _to_split(x[:0], y[:0], group_frame(frame.iloc[:0], config.sensitive, bins))
    width = x.shape[1]
    return Dataset(
        name=Path(config.data).stem,
        kind="tabular",
        train=empty,
        val=empty,
        test=_to_split(x, y, group_frame(frame, config.sensitive, bins)),
        classes=classes,
        target=target,
        sensitive=list(config.sensitive),
        input_shape=(width,),
        feature_names=pre.feature_names,
        fingerprint=digest,
        split_source="every row of the file (evaluation only)",
        perturbable=torch.tensor(schema["perturbable"], dtype=torch.bool),
        lower=torch.tensor(schema["lower"]),
        upper=torch.tensor(schema["upper"]),
        preprocessor=pre,
        missing_counts={
            str(c): int(v) for c, v in frame[pre.numeric + pre.categorical].isna().sum().items() if v
        },
        positive_label=schema.get("positive_label"),
        group_bins=bins,
        notes=["no training rows are available for this evaluation; audits that need them are skipped"],
    )


def _positive_label(config: RunConfig, classes: list[str], target: str) -> str | None:
    if len(classes) != 2:
        if config.positive_label is not None:
            raise AuditError(
                f"--positive-label applies to a binary target; {target!r} has {len(classes)} classes"
            )
        return None
    if config.positive_label is None:
        return classes[1]
    if str(config.positive_label) not in classes:
        raise AuditError(
            f"--positive-label {config.positive_label!r} is not a value of {target!r}; expected one of {classes}"
        )
    return str(config.positive_label)


def _load_digits(config: RunConfig) -> Dataset:
    if config.sensitive:
        raise AuditError("digits has no sensitive columns; drop --sensitive or use tabular data")
    tabular_only = {
        "--target": config.target,
        "--categorical": config.categorical,
        "--numeric": config.numeric,
        "--drop-columns": config.drop_columns,
        "--positive-label": config.positive_label,
    }
    given = [flag for flag, value in tabular_only.items() if value]
    if given:
        raise AuditError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to tabular data; digits is 8x8 images of 10 classes"
        )
    images, labels, digest = datasets.load_digits_images()
    rest, test_idx = _stratified_split(len(labels), labels, config.test_fraction, config.seed)
    tr, va = _stratified_split(len(rest), labels[rest], config.val_fraction, config.seed)
    train_idx, val_idx = rest[tr], rest[va]
    no_groups = lambda idx: pd.DataFrame(index=range(len(idx)))  # noqa: E731
    width = int(np.prod(images.shape[1:]))
    return Dataset(
        name="digits",
        kind="image",
        train=_to_split(images[train_idx], labels[train_idx], no_groups(train_idx)),
        val=_to_split(images[val_idx], labels[val_idx], no_groups(val_idx)),
        test=_to_split(images[test_idx], labels[test_idx], no_groups(test_idx)),
        classes=[str(c) for c in range(10)],
        target="digit",
        sensitive=[],
        input_shape=tuple(images.shape[1:]),
        feature_names=[f"pixel_{i}" for i in range(width)],
        fingerprint=digest,
        split_source="stratified split from --seed",
        perturbable=torch.ones(width, dtype=torch.bool),
        lower=torch.zeros(width),
        upper=torch.ones(width),
    )
