"""Tabular and image data: loading, schema, splits, and preprocessing fitted on the training split only."""

from __future__ import annotations

import hashlib
from collections import Counter
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

MISSING = "<missing>"
NA_VALUES = ["?"]  # UCI's marker, beside pandas' own (empty, NA, NaN, ...)
MAX_GROUPS_BEFORE_BINNING = 10  # a numeric sensitive column with more values is binned into quartiles
CSV_SEPARATORS = {".csv": ",", ".txt": ",", ".tsv": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
# A text column whose non-missing values are more than this share numbers is ambiguous: refused, naming a stray value.
NUMERIC_SHARE = 0.9
# Beyond this magnitude a square overflows float64: the standard deviation becomes inf and the column a constant.
MAX_ABS_VALUE = 1e150
# A target with more classes than this, most of them on a single row, is a regression target given to a classifier.
CONTINUOUS_TARGET_CLASSES = 50
MAX_SAVED_GROUPS = 1000  # a sensitive column's training groups are saved with the model up to this many
PARQUET_HASH_BLOCK = 1 << 22  # bytes hashed at a time
# Rows transformed at a time into the feature matrix: a block's float64 temporaries stay a few MB, in cache.
TRANSFORM_ROWS = 32_768
CHECK_ROWS = 1 << 20  # rows checked for non-finite inputs at a time


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
    def fit(
        cls,
        frame: pd.DataFrame,
        *,
        numeric: list[str],
        categorical: list[str],
        rows: np.ndarray | None = None,
    ) -> TabularPreprocessor:
        """Fit on the training rows only: ``rows`` of ``frame`` (every row when None), one column at a time."""
        medians, means, stds = [], [], []
        for col in numeric:  # one float64 copy of one column at a time, never of the whole table
            values = pd.Series(_numeric_values(frame, col, rows), copy=False)
            median = values.median()
            median = 0.0 if np.isnan(median) else float(median)
            filled = values.fillna(median)
            std = filled.std(ddof=0)
            medians.append(median)
            means.append(float(filled.mean()))
            stds.append(1.0 if std == 0.0 or np.isnan(std) else float(std))
        categories = []
        for col in categorical:
            codes, labels = _category_codes(frame[col])
            seen = np.bincount(codes if rows is None else codes[rows], minlength=len(labels)) > 0
            categories.append(sorted({labels[i] for i in np.flatnonzero(seen)}))
        return cls(numeric, categorical, medians, means, stds, categories)

    @property
    def feature_names(self) -> list[str]:
        """Names of the model's input columns, numeric first."""
        names = list(self.numeric)
        for col, cats in zip(self.categorical, self.categories):
            names.extend(f"{col}={cat}" for cat in cats)
        return names

    def transform(
        self, frame: pd.DataFrame, *, rows: np.ndarray | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Return the model's float32 input matrix for these rows (``rows`` of ``frame``: distinct positions, in that
        order; all if None).

        ``out``: a zero-filled float32 matrix of those rows to fill (a part of a larger one), returned.

        Filled block by block straight into one float32 matrix: no float64 copy of the table. Each value is
        computed as before in float64 ((value - mean) / std, then rounded once to float32), so it is bit for bit
        the whole-table transform's.
        """
        missing = [c for c in self.numeric + self.categorical if c not in frame.columns]
        if missing:
            raise AuditError(f"data lacks column(s) {', '.join(missing)} that the model was trained on")
        n = len(frame) if rows is None else len(rows)
        try:
            numeric = [_numeric_values(frame, col, None) for col in self.numeric]
        except (TypeError, ValueError):
            raise AuditError(_non_numeric_message(frame, self.numeric)) from None
        onehot, offset = [], len(self.numeric)
        for col, cats in zip(self.categorical, self.categories):
            codes, labels = _category_codes(frame[col])
            position = pd.Index(cats, dtype=object).get_indexer(pd.Index(labels, dtype=object))
            onehot.append((codes, np.where(position >= 0, position + offset, -1)))
            offset += len(cats)
        out = np.zeros((n, offset), np.float32) if out is None else out
        if rows is None:
            for start in range(0, n, TRANSFORM_ROWS):
                self._fill(
                    out[start : start + TRANSFORM_ROWS], numeric, onehot, slice(start, start + TRANSFORM_ROWS)
                )
            return out
        # Read the frame in its own order and send each row to its place: gathering shuffled rows column by column
        # missed the cache on every value (10M rows on a busy 2-core machine: 65 s, against 35 s this way).
        place = np.full(len(frame), -1, np.int64)
        place[rows] = np.arange(n)
        for start in range(0, len(frame), TRANSFORM_ROWS):
            wanted = np.flatnonzero(place[start : start + TRANSFORM_ROWS] >= 0) + start
            block = np.zeros((len(wanted), offset), np.float32)
            self._fill(block, numeric, onehot, wanted)
            out[place[wanted]] = block
        return out

    def _fill(
        self,
        block: np.ndarray,
        numeric: list[np.ndarray],
        onehot: list[tuple[np.ndarray, np.ndarray]],
        take: slice | np.ndarray,
    ) -> None:
        """One block of rows: standardised numeric columns, then a 1 in each categorical column's value."""
        for j, values in enumerate(numeric):
            part = values[take]
            part = np.where(np.isnan(part), self.medians[j], part)
            block[:, j] = (part - self.means[j]) / self.stds[j]
        for codes, columns in onehot:
            column = columns[codes[take]]
            known = np.flatnonzero(column >= 0)
            block[known, column[known]] = 1.0

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
    # What the report must show as warnings (the performance section takes them, as it takes ``notes``).
    warnings: list[str] = field(default_factory=list)

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
            group_values=self._group_values(),
            preprocessor=self.preprocessor.to_dict() if self.preprocessor else None,
            perturbable=self.perturbable.tolist(),
            lower=self.lower.tolist(),
            upper=self.upper.tolist(),
        )

    def _group_values(self) -> dict[str, list[str]]:
        """The groups each categorical sensitive column had in training (so ``audit evaluate`` can tell new ones)."""
        values = {
            col: sorted(set(self.train.groups[col]))
            for col in self.sensitive
            if col not in self.group_bins and col in self.train.groups
        }
        return {col: groups for col, groups in values.items() if len(groups) <= MAX_SAVED_GROUPS}


def _as_category(column: pd.Series) -> pd.Series:
    if isinstance(column.dtype, pd.CategoricalDtype):  # the strings it holds, without a string per row
        codes, labels = _category_codes(column)
        return pd.Series(np.asarray(labels, dtype=object)[codes], index=column.index, copy=False)
    return column.astype("string").fillna(MISSING).astype(str)


def _category_codes(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """A column as categories: (a small code per row, each code's label), a label being ``_as_category``'s string.

    A categorical column (Parquet text) converts its few categories, not its rows; missing cells get the last
    code, labelled ``MISSING`` (a literal ``MISSING`` value may then be labelled twice: same string, same group).
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        names = pd.Series(column.cat.categories, dtype=column.cat.categories.dtype)
        labels = names.astype("string").fillna(MISSING).astype(str).tolist() + [MISSING]
        codes = column.cat.codes.to_numpy()
        codes = np.where(codes < 0, len(labels) - 1, codes) if (codes < 0).any() else codes
    else:
        codes, uniques = pd.factorize(_as_category(column).to_numpy(dtype=object))
        labels = [str(label) for label in uniques]
    return codes.astype(np.min_scalar_type(max(len(labels) - 1, 0)), copy=False), labels


def _numeric_values(frame: pd.DataFrame, col: str, rows: np.ndarray | None) -> np.ndarray:
    """One numeric column's values (``rows`` of them, all when None) as float64 (no copy when it is float64)."""
    values = frame[col].astype("float64").to_numpy()
    return values if rows is None else values[rows]


def _number_count(column: pd.Series) -> tuple[int, int, Any]:
    """(numbers, non-numbers, the first non-number) among a column's non-missing values (parsed once per value)."""
    counts = column.value_counts(sort=False, dropna=True)
    stray = counts[pd.to_numeric(pd.Series(counts.index, dtype=object), errors="coerce").isna().to_numpy()]
    n_stray = int(stray.sum())
    return int(counts.sum()) - n_stray, n_stray, (stray.index[0] if len(stray) else None)


def _non_numeric_message(frame: pd.DataFrame, numeric: list[str], source: str | None = None) -> str:
    """The refusal for numeric columns holding text, naming them and a value."""
    bad = [c for c in numeric if _number_count(frame[c])[1]]
    example = _number_count(frame[bad[0]])[2] if bad else None
    where = f" in {source}" if source else ""
    return (
        f"numeric column(s) {', '.join(bad or numeric)}{where} hold non-numeric values (e.g. {example!r}); "
        f"expected numbers, as in the training data (--numeric {','.join(bad or numeric)} makes them missing)"
    )


def read_table(path: str) -> tuple[pd.DataFrame, str]:
    """Read a CSV, TSV or Parquet file; return the frame and the SHA-256 of its bytes.

    Refused, in one line naming the file: a missing, empty, binary, non-UTF-8 or header-only file; a column with
    no name or a name used twice (read from the header itself: pandas would rename the second ``sex.1``); rows
    with more fields than the header; and a single column whose name shows another separator.
    """
    file = Path(path)
    if not file.is_file():
        raise AuditError(
            f"data file {path} does not exist; expected a .csv or .parquet file, "
            f"or a built-in: {', '.join(datasets.BUILTIN)}"
        )
    suffix = file.suffix.lower()
    if suffix not in CSV_SEPARATORS and suffix not in PARQUET_SUFFIXES:
        hint = " (export a spreadsheet as CSV)" if suffix in (".xls", ".xlsx", ".ods") else ""
        raise AuditError(
            f"data file {path} has an unknown type {suffix!r}; expected .csv, .tsv or .parquet{hint}"
        )
    if suffix in PARQUET_SUFFIXES:  # read column-wise by pyarrow: the file's bytes are hashed, never held
        raw, digest = b"", _file_digest(file)
    else:
        raw = file.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
    frame = _parse_table(file, path, raw)
    if len(frame) == 0:
        raise AuditError(f"data file {path} has no data rows; expected a header row and data rows")
    return frame, digest


def _parse_table(file: Path, path: str, raw: bytes) -> pd.DataFrame:
    suffix = file.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq  # pandas' Parquet engine; imported only to read a Parquet file

            _check_header(pq.read_schema(file).names, path)
            return _read_parquet(file)
        _check_text(raw, path)
        sep = CSV_SEPARATORS[suffix]
        options = dict(sep=sep, skipinitialspace=True)
        header = pd.read_csv(file, header=None, nrows=1, dtype=str, keep_default_na=False, **options)
        _check_header(list(header.iloc[0]), path)
        frame = pd.read_csv(file, na_values=NA_VALUES, **options)
        _check_csv_shape(frame, path, sep, len(header.columns))
        return frame
    except pd.errors.EmptyDataError:
        raise AuditError(f"data file {path} is empty; expected a header row and data rows") from None
    except UnicodeDecodeError:
        raise AuditError(_not_utf8(raw, path)) from None
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise AuditError(f"data file {path} could not be parsed: {str(exc).splitlines()[0]}") from None


def _file_digest(file: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (a 10-million-row table is never held whole for its hash)."""
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(PARQUET_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_parquet(file: Path) -> pd.DataFrame:
    """A Parquet file as a frame: text columns as categoricals (one small code per row, not a string per row).

    The values are the file's; every later step reads a categorical column as the strings it holds (see
    ``_category_codes``). Columns stay unconsolidated and Arrow's buffers are freed as they convert, so the
    frame is the only full copy of the table.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(file)
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    table = pq.read_table(file, read_dictionary=text)
    return table.to_pandas(split_blocks=True, self_destruct=True)


def _check_text(raw: bytes, path: str) -> None:
    """Refuse a binary file given as CSV (NUL bytes), saying what it looks like."""
    head = raw[:65536]
    if b"\x00" not in head:
        return
    looks = {
        b"PAR1": "; it looks like Parquet (name it .parquet)",
        b"PK\x03\x04": "; it looks like a zip archive or an Excel workbook (export it as CSV)",
        b"\xff\xfe": "; it looks like UTF-16 text (save it as UTF-8)",
        b"\xfe\xff": "; it looks like UTF-16 text (save it as UTF-8)",
    }
    hint = next((text for magic, text in looks.items() if head.startswith(magic)), "")
    raise AuditError(f"data file {path} is not text (it holds NUL bytes{hint}); expected a UTF-8 CSV")


def _not_utf8(raw: bytes, path: str) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return (
            f"data file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
            "expected UTF-8 (re-save the file as UTF-8)"
        )
    return f"data file {path} could not be decoded; expected UTF-8 text"


def _check_header(names: list[Any], path: str) -> None:
    """Refuse a column with no name, or a name used twice (after trimming spaces), naming it and its position."""
    names = ["" if pd.isna(n) else str(n).strip() for n in names]
    empty = [i + 1 for i, name in enumerate(names) if not name]
    if empty:
        hint = " (a saved index? write the file with index=False)" if empty == [1] else ""
        raise AuditError(
            f"data file {path} has a column with no name (column {', '.join(map(str, empty))} of the header); "
            f"expected every column named{hint}"
        )
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        where = [i + 1 for i, name in enumerate(names) if name == repeated[0]]
        raise AuditError(
            f"data file {path} names column(s) {', '.join(map(repr, repeated))} more than once "
            f"({repeated[0]!r} is column {' and '.join(map(str, where))}); expected unique column names"
        )


def _check_csv_shape(frame: pd.DataFrame, path: str, sep: str, n_names: int) -> None:
    """Refuse rows wider than the header (pandas would make the extra field an index) and a wrong separator."""
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        raise AuditError(
            f"data file {path} has rows with more fields than its header has names ({n_names}); "
            "expected one name per column"
        )
    if len(frame.columns) != 1:
        return
    name = str(frame.columns[0])
    other = next((s for s in ("\t", ";", "|", ",") if s != sep and s in name), None)
    if other:
        kind = "comma" if sep == "," else "tab"
        hint = " (name a tab-separated file .tsv)" if other == "\t" else ""
        raise AuditError(
            f"data file {path} reads as one column named {name[:60]!r}, its fields separated by {other!r}; "
            f"expected {kind}-separated values{hint}"
        )


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
    codes, labels = _target_labels(column)
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
    positions = pd.Categorical(labels, categories=classes).codes  # each distinct label's class
    if (positions < 0).any():
        unseen = sorted(set(labels[positions < 0]))[:5]
        raise AuditError(
            f"target column {target!r} in {source} has value(s) {unseen} the model never saw; expected {classes}"
        )
    return positions[codes].astype(np.int64), classes


def _target_labels(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(a code per row, the distinct labels: values as stripped strings), converting each distinct value once."""
    if column.dtype == object:  # mixed Python values: hash-equal ones (1, 1.0, True) print differently
        codes, uniques = pd.factorize(column.astype(str).str.strip())
        return codes, np.asarray(uniques, dtype=object)
    codes, uniques = pd.factorize(column)
    return codes, pd.Series(uniques).astype(str).str.strip().to_numpy(dtype=object)


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


def check_sensitive(
    frame: pd.DataFrame, sensitive: list[str], source: str, *, target: str | None = None
) -> None:
    """Refuse a sensitive column that is missing, named twice, the target, or of a single group (naming it).

    A sensitive column may also be in --drop-columns: it is then left out of the features and still groups rows.
    """
    for col, count in Counter(sensitive).items():
        if count > 1:
            raise AuditError(f"--sensitive names {col!r} {count} times; expected each column once")
    for col in sensitive:
        if col not in frame.columns:
            raise AuditError(
                f"{source} has no sensitive column {col!r}; columns are: {', '.join(map(str, frame.columns))}"
            )
        if col == target:
            raise AuditError(
                f"--sensitive column {col!r} is the target of {source}; expected a column other than the "
                "target (groups are compared on the model's predictions of it)"
            )
        n_values = frame[col].nunique(dropna=False)
        if n_values < 2:
            raise AuditError(
                f"sensitive column {col!r} in {source} has a single value ({frame[col].iloc[0]!r}); "
                "expected at least two groups to compare"
            )


def _is_number(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _check_roles(frame: pd.DataFrame, config: RunConfig, target: str, source: str) -> None:
    """Refuse a --categorical/--numeric/--drop-columns column that is absent or the target, or typed both ways."""
    for flag, columns in (
        ("--categorical", config.categorical),
        ("--numeric", config.numeric),
        ("--drop-columns", config.drop_columns),
    ):
        for col in columns:
            if col == target:
                raise AuditError(
                    f"{flag} column {col!r} is the target of {source}; expected feature columns "
                    "(the target is never a feature)"
                )
            if col not in frame.columns:
                raise AuditError(
                    f"{flag} column {col!r} is not in {source}; columns are: {', '.join(map(str, frame.columns))}"
                )
    both = [col for col in config.categorical if col in config.numeric]
    if both:
        raise AuditError(
            f"column {both[0]!r} is named by both --categorical and --numeric; expected one type per column"
        )


def _coerce_numeric(
    frames: list[pd.DataFrame], columns: list[str], source: str
) -> tuple[list[pd.DataFrame], list[str]]:
    """--numeric columns: make stray text missing (imputed later), with a note naming the count and a value.

    A column whose values are mostly not numbers is refused: --numeric is for a few stray values.
    """
    notes = []
    for col in columns:
        counts = [_number_count(part[col]) for part in frames]
        numbers, strays = sum(c[0] for c in counts), sum(c[1] for c in counts)
        if not strays:
            continue
        example = next(c[2] for c in counts if c[1])
        if strays > numbers:
            raise AuditError(
                f"column {col!r} in {source} was declared numeric (--numeric) but {strays} of its "
                f"{numbers + strays} values are not numbers (e.g. {example!r}); expected mostly numbers"
            )
        frames = [part.assign(**{col: pd.to_numeric(part[col], errors="coerce")}) for part in frames]
        notes.append(
            f"column {col!r}: --numeric made {strays} non-numeric value(s) such as {example!r} missing; "
            "as a feature they are imputed with the training median"
        )
    return frames, notes


def _refuse_stray_text(column: pd.Series, col: str, source: str) -> None:
    """Refuse a text column that is mostly numbers: a few stray values would make it hundreds of categories."""
    numbers, strays, example = _number_count(column)
    if strays and numbers > NUMERIC_SHARE * (numbers + strays):
        raise AuditError(
            f"column {col!r} in {source} is numeric but for {strays} value(s) such as {example!r} "
            f"({numbers} numbers); expected numbers only: pass --numeric {col} to make those missing "
            f"(imputed), or --categorical {col} to treat every value as a category"
        )


def _feature_columns(
    frame: pd.DataFrame, config: RunConfig, target: str, source: str
) -> tuple[list[str], list[str]]:
    """Numeric and categorical feature columns: every column but the target and the dropped ones.

    A sensitive column named in --drop-columns (or with --drop-sensitive) is no feature but still groups rows.
    """
    excluded = {target, *config.drop_columns} | (set(config.sensitive) if config.drop_sensitive else set())
    numeric, categorical = [], []
    for col in frame.columns:
        if col in excluded and col not in config.sensitive:
            continue
        is_number = _is_number(frame[col])
        if not is_number and col not in config.categorical and col not in config.numeric:
            _refuse_stray_text(frame[col], col, source)
        if col in excluded:
            continue
        if col not in config.categorical and (is_number or col in config.numeric):
            numeric.append(col)
        else:
            categorical.append(col)
    if not numeric and not categorical:
        raise AuditError(
            f"{source} has no feature columns left after removing the target {target!r} and dropped columns; "
            f"columns are: {', '.join(map(str, frame.columns))}; expected at least one feature"
        )
    return numeric, categorical


def _check_finite(frame: pd.DataFrame, columns: list[str], source: str, *, scale: bool = True) -> None:
    """Refuse inf/-inf in these numeric columns (naming the rows) and, with ``scale``, values too large to
    standardise (naming one)."""
    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce").astype("float64").to_numpy()
        infinite = np.flatnonzero(np.isinf(values))
        if len(infinite):
            raise AuditError(
                f"column {col!r} in {source} holds inf or -inf in {len(infinite)} row(s) (first: data row "
                f"{infinite[0] + 1}, {values[infinite[0]]:g}); expected finite numbers (leave a cell empty "
                "to have it imputed)"
            )
        huge = np.flatnonzero(np.abs(values) > MAX_ABS_VALUE)
        if scale and len(huge):
            raise AuditError(
                f"column {col!r} in {source} holds {len(huge)} value(s) too large to standardise (e.g. "
                f"{values[huge[0]]:g}); expected magnitudes below {MAX_ABS_VALUE:g} (rescale the column, "
                "e.g. take its log)"
            )


def _check_standardised(
    pre: TabularPreprocessor, frame: pd.DataFrame, rows: np.ndarray, x: np.ndarray, source: str
) -> None:
    """Refuse a numeric column whose standardisation failed: a mean or std that is not finite, or a column that
    varies in ``rows`` of ``frame`` (the rows fitted on) but is constant in ``x`` (their transform)."""
    for j, col in enumerate(pre.numeric):
        mean, std = pre.means[j], pre.stds[j]
        if np.isfinite(mean) and np.isfinite(std) and np.ptp(x[:, j]) != 0:
            continue  # the cheap test first: counting distinct raw values is needed only for a constant column
        raw = pd.to_numeric(frame[col].iloc[rows], errors="coerce")
        if np.isfinite(mean) and np.isfinite(std) and raw.nunique() <= 1:
            continue
        raise AuditError(
            f"column {col!r} in {source} cannot be standardised (mean {mean:g}, std {std:g}, largest |value| "
            f"{raw.abs().max():g}); expected numbers of a workable scale (rescale the column, e.g. take its log)"
        )


def _transform(
    pre: TabularPreprocessor,
    frame: pd.DataFrame,
    source: str,
    rows: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The model's inputs for these rows (into ``out`` if given); refuse a value that standardises beyond
    float32 (naming it)."""
    with np.errstate(over="ignore"):  # an overflow is refused below, naming the column and value
        x = pre.transform(frame, rows=rows, out=out)
    for start in range(0, len(x), CHECK_ROWS):  # block by block: no mask the size of the numeric columns
        bad = np.argwhere(~np.isfinite(x[start : start + CHECK_ROWS, : len(pre.numeric)]))
        if not len(bad):
            continue
        row, j = bad[0]
        row = start + row if rows is None else rows[start + row]
        col, mean, std = pre.numeric[j], pre.means[j], pre.stds[j]
        value = float(pd.to_numeric(frame[col], errors="coerce").iloc[row])
        raise AuditError(
            f"column {col!r} in {source} has value {value:g}, {abs(value - mean) / std:.3g} standard deviations "
            f"from the training mean {mean:g}; expected values on the training data's scale"
        )
    return x


def _typed_frames(
    config: RunConfig, frame: pd.DataFrame, test_frame: pd.DataFrame | None, target: str, source: str
) -> tuple[pd.DataFrame, pd.DataFrame | None, tuple[list[str], list[str]], list[str]]:
    """Check the column options, make --numeric columns' stray text missing, type the features, check values.

    Returns the frames, the (numeric, categorical) feature columns and notes on what was made missing. Runs on
    every row before the split, so a value in any split is refused alike.
    """
    _check_roles(frame, config, target, source)
    frames, notes = _coerce_numeric(
        [frame] if test_frame is None else [frame, test_frame], config.numeric, source
    )
    numeric, categorical = _feature_columns(frames[0], config, target, source)
    grouping = [c for c in config.sensitive if c not in numeric and _is_number(frames[0][c])]
    for part in frames:
        _check_finite(part, numeric, source)
        _check_finite(part, grouping, source, scale=False)
    return frames[0], (frames[1] if len(frames) > 1 else None), (numeric, categorical), notes


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


def load_dataset(
    config: RunConfig,
    *,
    schema: dict[str, Any] | None = None,
    frame: pd.DataFrame | None = None,
    train_frame: pd.DataFrame | None = None,
) -> Dataset:
    """Load the data a run names, split it, and fit preprocessing on the training split only.

    With ``schema`` (from a saved model), reuse its preprocessing: built-in data gets the same
    splits the model was trained with; a user's file becomes one evaluation split. ``frame``: a DataFrame
    given through the API in place of the file --data names; ``train_frame`` in place of --train-data (the saved
    model's training rows, for the audits that need them).
    """
    if config.data == "digits":
        return _load_digits(config)
    if config.data == "adult":
        train_frame, test_frame, digest = datasets.load_adult()
        target = config.target or "income"
        return _build_tabular(
            config, "adult", train_frame, test_frame, digest, target, "adult's own train/test split", schema
        )
    frame, digest = table_from_frame(frame, config.data) if frame is not None else read_table(config.data)
    if not config.target and not schema:
        raise AuditError(
            f"--target is required for {config.data}; expected one of its columns: {', '.join(map(str, frame.columns))}"
        )
    target = config.target or schema["target"]
    if schema is not None:
        return _build_evaluation_only(config, frame, digest, target, schema, train_frame)
    return _build_tabular(
        config, Path(config.data).stem, frame, None, digest, target, "stratified split from --seed", None
    )


MIN_ROWS_PER_CLASS = 10  # so that train, validation and test each hold every class (at the default fractions)


def _check_classes(y: np.ndarray, classes: list[str], source: str, target: str, *, numeric: bool) -> None:
    """Refuse a class too rare to split; a target of many classes most seen once is named as continuous."""
    counts = np.bincount(y, minlength=len(classes))
    rarest = int(counts.min())
    if rarest >= MIN_ROWS_PER_CLASS:
        return
    singles = int((counts == 1).sum())
    if len(classes) > CONTINUOUS_TARGET_CLASSES and singles > len(classes) / 2:
        looks = " (it looks continuous)" if numeric else ""
        raise AuditError(
            f"target column {target!r} in {source} has {len(classes)} distinct values{looks}, {singles} of them "
            "on a single row; rai-audit trains classifiers: expected a target of a few classes (bin it first)"
        )
    raise AuditError(
        f"{source} has {len(y)} rows and its rarest target class only {rarest}; expected at least "
        f"{MIN_ROWS_PER_CLASS} rows of every class of {target!r} to split into train, validation and test"
    )


def _preprocessing(
    config: RunConfig,
    columns: tuple[list[str], list[str]] | None,
    frame: pd.DataFrame,
    train_rows: np.ndarray,
    schema: dict[str, Any] | None,
) -> tuple[TabularPreprocessor, dict[str, list[float]], list[str]]:
    """The preprocessing and sensitive bins: fitted on the training rows, or a saved model's; with notes on both."""
    if schema is None:
        numeric, categorical = columns
        pre = TabularPreprocessor.fit(frame, numeric=numeric, categorical=categorical, rows=train_rows)
        bins = sensitive_bins(frame[list(config.sensitive)].iloc[train_rows], config.sensitive)
    else:
        pre = TabularPreprocessor.from_dict(schema["preprocessor"])
        bins = {k: v for k, v in schema.get("group_bins", {}).items() if k in config.sensitive}
    notes = [
        f"numeric sensitive column {col!r} was grouped into quartile bins {edges} from the training split"
        for col, edges in bins.items()
    ]
    notes += [
        f"categorical column {col!r} has {len(cats)} values; consider dropping it (--drop-columns) "
        "if it is an identifier"
        for col, cats in zip(pre.categorical, pre.categories)
        if len(cats) > 200
    ]
    return pre, bins, notes


def _missing_counts(frames: list[pd.DataFrame], pre: TabularPreprocessor) -> dict[str, int]:
    """Missing cells per feature column over these frames (counted column by column: no copy of the table)."""
    columns = pre.numeric + pre.categorical
    counts = {c: sum(int(f[c].isna().sum()) for f in frames) for c in columns}
    return {str(c): v for c, v in counts.items() if v}


def _split_rows(
    config: RunConfig,
    frame: pd.DataFrame,
    test_frame: pd.DataFrame | None,
    y_all: np.ndarray,
    classes: list[str],
    target: str,
) -> list[tuple[pd.DataFrame, np.ndarray, np.ndarray]]:
    """Train, validation and test rows: (their frame, row positions in it, labels); test is the data's own split,
    else a stratified one. Positions, not copies of the frame."""
    if test_frame is None:
        rest, test_idx = _stratified_split(len(frame), y_all, config.test_fraction, config.seed)
        test = (frame, test_idx, y_all[test_idx])
    else:
        rest = np.arange(len(frame))
        y_test, _ = _encode_target(test_frame, target, config.data, classes)
        test = (test_frame, np.arange(len(test_frame)), y_test)
    train_idx, val_idx = _stratified_split(len(rest), y_all[rest], config.val_fraction, config.seed)
    return [
        (frame, rest[train_idx], y_all[rest[train_idx]]),
        (frame, rest[val_idx], y_all[rest[val_idx]]),
        test,
    ]


def _feature_matrix(
    pre: TabularPreprocessor, parts: list[tuple[pd.DataFrame, np.ndarray, np.ndarray]], source: str
) -> list[np.ndarray]:
    """Every split's inputs in one float32 matrix (train, validation, test rows in turn) and each split's view.

    The features are held once: the splits' tensors are row ranges of this matrix.
    """
    sizes = [len(rows) for _, rows, _ in parts]
    x = np.zeros((sum(sizes), len(pre.feature_names)), np.float32)
    ends = np.cumsum(sizes)
    views = [x[end - size : end] for size, end in zip(sizes, ends)]
    if all(part is parts[0][0] for part, _, _ in parts):  # one frame: its rows in split order, in one pass
        _transform(pre, parts[0][0], source, np.concatenate([rows for _, rows, _ in parts]), out=x)
    else:
        for (part, rows, _), view in zip(parts, views):
            _transform(pre, part, source, rows, out=view)
    return views


def _split_groups(
    parts: list[tuple[pd.DataFrame, np.ndarray, np.ndarray]],
    sensitive: list[str],
    bins: dict[str, list[float]],
) -> list[pd.DataFrame]:
    """Each split's group labels, computed once per frame and taken by row position."""
    labelled: dict[int, pd.DataFrame] = {}
    groups = []
    for part, rows, _ in parts:
        if id(part) not in labelled:
            labelled[id(part)] = group_frame(part, sensitive, bins)
        labels = labelled[id(part)]
        groups.append(labels.iloc[rows] if len(labels.columns) else labels)  # no columns: no rows, as before
    return groups


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
    """Check the table, split it and preprocess it; every refusal comes before any training."""
    source = config.data
    y_all, classes = _encode_target(frame, target, source, schema["classes"] if schema else None)
    check_sensitive(frame, config.sensitive, source, target=target)
    _check_classes(y_all, classes, source, target, numeric=_is_number(frame[target]))
    positive = _positive_label(config, classes, target)
    if schema is None:
        frame, test_frame, columns, coerced = _typed_frames(config, frame, test_frame, target, source)
    else:
        columns, coerced = None, []
    parts = _split_rows(config, frame, test_frame, y_all, classes, target)
    pre, bins, notes = _preprocessing(config, columns, frame, parts[0][1], schema)
    xs = _feature_matrix(pre, parts, source)
    _check_standardised(pre, frame, parts[0][1], xs[0], source)
    mask, lower, upper = _tabular_bounds(xs[0], len(pre.numeric))
    train, val, test = (
        _to_split(x, y, groups)
        for x, (_, _, y), groups in zip(xs, parts, _split_groups(parts, config.sensitive, bins))
    )
    return Dataset(
        name=name,
        kind="tabular",
        train=train,
        val=val,
        test=test,
        classes=classes,
        target=target,
        sensitive=list(config.sensitive),
        input_shape=(xs[0].shape[1],),
        feature_names=pre.feature_names,
        fingerprint=digest,
        split_source=split_source,
        perturbable=mask,
        lower=lower,
        upper=upper,
        preprocessor=pre,
        missing_counts=_missing_counts([frame] if test_frame is None else [frame, test_frame], pre),
        positive_label=positive,
        group_bins=bins,
        notes=notes + coerced,
    )


def _evaluation_frame(
    frame: pd.DataFrame, pre: TabularPreprocessor, config: RunConfig, source: str, binned: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """Check a file against a saved model's columns; --numeric makes stray text in its numeric ones missing.

    ``binned``: sensitive columns grouped by the model's saved bins, which must hold numbers too.
    """
    lacking = [c for c in pre.numeric + pre.categorical if c not in frame.columns]
    if lacking:
        raise AuditError(
            f"{source} lacks column(s) {', '.join(map(repr, lacking))} that the model was trained on; "
            "expected the training data's columns"
        )
    numeric = pre.numeric + [c for c in binned if c not in pre.numeric]
    (frame,), notes = _coerce_numeric([frame], [c for c in config.numeric if c in numeric], source)
    text = [c for c in numeric if not _is_number(frame[c]) and _number_count(frame[c])[1]]
    if text:
        raise AuditError(_non_numeric_message(frame, text, source))
    _check_finite(frame, pre.numeric, source)
    _check_finite(frame, binned, source, scale=False)
    return frame, notes


def _unseen_groups(
    frame: pd.DataFrame,
    sensitive: list[str],
    schema: dict[str, Any],
    pre: TabularPreprocessor,
    source: str,
) -> tuple[list[str], list[str]]:
    """Warnings for a sensitive column none of whose values the model saw in training; notes for some unseen."""
    seen = dict(zip(pre.categorical, pre.categories)) | dict(schema.get("group_values") or {})
    saved_bins = schema.get("group_bins") or {}
    warnings, notes = [], []
    for col in sensitive:
        if col in saved_bins:
            low, high = saved_bins[col][0], saved_bins[col][-1]
            values = pd.to_numeric(frame[col], errors="coerce").dropna()
            if len(values) and ((values < low) | (values > high)).all():
                warnings.append(
                    f"every value of sensitive column {col!r} in {source} lies outside the training range "
                    f"[{low:g}, {high:g}]; its groups are only the outer training bins"
                )
            continue
        labels = set(_as_category(frame[col])) if col in seen else set()
        unseen = sorted(labels - set(seen.get(col, [])))
        shown = ", ".join(map(repr, seen.get(col, [])[:5]))
        if unseen and len(unseen) == len(labels):
            warnings.append(
                f"no value of sensitive column {col!r} in {source} occurred in the model's training data "
                f"(e.g. {unseen[0]!r}; training had {shown}); its groups are ones the model never saw"
            )
        elif unseen:
            notes.append(
                f"{len(unseen)} group(s) of sensitive column {col!r} in {source} did not occur in training "
                f"(e.g. {unseen[0]!r})"
            )
    return warnings, notes


def _build_evaluation_only(
    config: RunConfig,
    frame: pd.DataFrame,
    digest: str,
    target: str,
    schema: dict[str, Any],
    train_frame: pd.DataFrame | None = None,
) -> Dataset:
    """A user's file audited against a saved model: every row is evaluation data; training rows only from
    --train-data."""
    source = config.data
    y, classes = _encode_target(frame, target, source, schema["classes"])
    check_sensitive(frame, config.sensitive, source, target=target)
    pre = TabularPreprocessor.from_dict(schema["preprocessor"])
    bins = {k: v for k, v in schema.get("group_bins", {}).items() if k in config.sensitive}
    frame, notes = _evaluation_frame(frame, pre, config, source, list(bins))
    bins.update({k: v for k, v in sensitive_bins(frame, config.sensitive).items() if k not in bins})
    warnings, group_notes = _unseen_groups(frame, config.sensitive, schema, pre, source)
    x = _transform(pre, frame, source)
    empty = _to_split(x[:0], y[:0], group_frame(frame.iloc[:0], config.sensitive, bins))
    train = (
        _saved_training_rows(config, train_frame, target, schema, bins)
        if train_given(config, train_frame)
        else empty
    )
    return Dataset(
        name=Path(source).stem,
        kind="tabular",
        train=train,
        val=empty,
        test=_to_split(x, y, group_frame(frame, config.sensitive, bins)),
        classes=classes,
        target=target,
        sensitive=list(config.sensitive),
        input_shape=(x.shape[1],),
        feature_names=pre.feature_names,
        fingerprint=digest,
        split_source="every row of the file (evaluation only)",
        perturbable=torch.tensor(schema["perturbable"], dtype=torch.bool),
        lower=torch.tensor(schema["lower"]),
        upper=torch.tensor(schema["upper"]),
        preprocessor=pre,
        missing_counts=_missing_counts([frame], pre),
        positive_label=schema.get("positive_label"),
        group_bins=bins,
        notes=([] if len(train) else [NO_TRAINING_ROWS]) + notes + group_notes,
        warnings=warnings,
    )


NO_TRAINING_ROWS = (
    "no training rows are available for this evaluation (--train-data); audits that need them are skipped"
)


def train_given(config: RunConfig, train_frame: pd.DataFrame | None) -> bool:
    """Whether the model's training rows were given (--train-data, or a DataFrame through the API)."""
    return train_frame is not None or bool(config.train_data)


def _saved_training_rows(
    config: RunConfig,
    train_frame: pd.DataFrame | None,
    target: str,
    schema: dict[str, Any],
    bins: dict[str, list[float]],
) -> Split:
    """--train-data for a saved model: checked and transformed exactly as the evaluation rows are."""
    source = config.train_data or "train_data"
    frame = table_from_frame(train_frame, source)[0] if train_frame is not None else read_table(source)[0]
    y, _ = _encode_target(frame, target, source, schema["classes"])
    check_sensitive(frame, config.sensitive, source, target=target)
    pre = TabularPreprocessor.from_dict(schema["preprocessor"])
    frame, _ = _evaluation_frame(frame, pre, config, source, list(bins))
    return _to_split(_transform(pre, frame, source), y, group_frame(frame, config.sensitive, bins))


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


def _no_groups(rows: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(index=range(len(rows)))  # images carry no sensitive columns


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
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to tabular data; "
            "digits is 8x8 images of 10 classes"
        )
    images, labels, digest = datasets.load_digits_images()
    rest, test_idx = _stratified_split(len(labels), labels, config.test_fraction, config.seed)
    tr, va = _stratified_split(len(rest), labels[rest], config.val_fraction, config.seed)
    train_idx, val_idx = rest[tr], rest[va]
    width = int(np.prod(images.shape[1:]))
    return Dataset(
        name="digits",
        kind="image",
        train=_to_split(images[train_idx], labels[train_idx], _no_groups(train_idx)),
        val=_to_split(images[val_idx], labels[val_idx], _no_groups(val_idx)),
        test=_to_split(images[test_idx], labels[test_idx], _no_groups(test_idx)),
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


# --- features ready: a table whose columns are a model's inputs as they are (a model trained elsewhere) -----------


def table_from_frame(frame: pd.DataFrame, name: str) -> tuple[pd.DataFrame, str]:
    """A DataFrame given through the API, checked as a file's header is; return it and a SHA-256 of its values."""
    _check_header(list(frame.columns), name)
    if len(frame) == 0:
        raise AuditError(f"data {name} has no rows; expected a table of rows to audit")
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    digest = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode() + hashed).hexdigest()
    return frame.reset_index(drop=True), digest


def ready_feature_columns(frame: pd.DataFrame, config: RunConfig, target: str, source: str) -> list[str]:
    """The model's input columns in order: --features as named, else every column but target, groups, dropped."""
    if config.features:
        repeated = [c for c, n in Counter(config.features).items() if n > 1]
        absent = [c for c in config.features if c not in frame.columns]
        if repeated or absent or target in config.features:
            problem = (
                f"names {repeated[0]!r} twice"
                if repeated
                else f"names column {absent[0]!r} that {source} lacks"
                if absent
                else f"names the target {target!r}"
            )
            raise AuditError(
                f"--features {problem}; expected the model's input columns, in order, from: "
                f"{', '.join(map(str, frame.columns))}"
            )
        return list(config.features)
    left_out = {target, *config.sensitive, *config.drop_columns}
    columns = [c for c in frame.columns if c not in left_out]
    if not columns:
        raise AuditError(f"{source} has no feature columns besides the target and sensitive columns")
    return columns


def _ready_inputs(frame: pd.DataFrame, features: list[str], source: str) -> np.ndarray:
    """The columns as float32, exactly as given: text, missing and non-finite cells are refused (none is imputed)."""
    for col in features:
        if col not in frame.columns:
            raise AuditError(f"{source} lacks feature column {col!r}; expected the same columns as --data")
        column = frame[col]
        if not (_is_number(column) or pd.api.types.is_bool_dtype(column)):
            example = column.dropna().iloc[0] if column.notna().any() else None
            raise AuditError(
                f"feature column {col!r} in {source} is not numeric (e.g. {example!r}); --features-ready feeds "
                "columns as they are: expected numbers (encode it first, or leave it out with --features)"
            )
        missing = int(column.isna().sum())
        if missing:
            raise AuditError(
                f"feature column {col!r} in {source} has {missing} missing value(s); --features-ready imputes "
                "nothing: expected every cell filled"
            )
    x = frame[features].to_numpy(dtype=np.float64)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    bad = np.argwhere(~np.isfinite(x32))
    if len(bad):
        row, j = bad[0]
        raise AuditError(
            f"feature column {features[j]!r} in {source} holds {x[row, j]:g} (data row {row + 1}); expected "
            "finite numbers within float32's range"
        )
    return x32


def _ready_labels(frames: list[tuple[pd.DataFrame, str]], target: str) -> tuple[list[np.ndarray], list[str]]:
    """Each table's labels, coded over the classes of all of them (sorted: logit k is the k-th class)."""
    for frame, source in frames:
        if target not in frame.columns:
            raise AuditError(
                f"{source} has no target column {target!r}; columns are: {', '.join(map(str, frame.columns))}"
            )
    combined = pd.DataFrame({target: pd.concat([f[target] for f, _ in frames], ignore_index=True)})
    _, classes = _encode_target(combined, target, " and ".join(s for _, s in frames))
    return [_encode_target(f, target, s, classes)[0] for f, s in frames], classes


def load_ready_dataset(
    config: RunConfig, *, frame: pd.DataFrame | None = None, train_frame: pd.DataFrame | None = None
) -> Dataset:
    """--features-ready: --data's rows are the test rows, --train-data's (if any) the training rows; no preprocessing.

    ``frame``/``train_frame``: DataFrames given through the API instead of the files.
    """
    source = config.data
    frame, digest = table_from_frame(frame, source) if frame is not None else read_table(source)
    tables = [(frame, source)]
    if train_given(config, train_frame):
        where = config.train_data or "train_data"
        train_frame = table_from_frame(train_frame, where)[0] if train_frame is not None else None
        tables.append((train_frame if train_frame is not None else read_table(where)[0], where))
    if not config.target:
        raise AuditError(f"--target is required with --features-ready; expected one of {source}'s columns")
    labels, classes = _ready_labels(tables, config.target)
    features = ready_feature_columns(frame, config, config.target, source)
    for table, where in tables:
        check_sensitive(table, config.sensitive, where, target=config.target)
    xs = [_ready_inputs(table, features, where) for table, where in tables]
    fitted = tables[-1][0]  # the training rows when known: the bins and the attack's bounds come from them
    bins = sensitive_bins(fitted, config.sensitive)
    splits = [
        _to_split(x, y, group_frame(t, config.sensitive, bins)) for x, y, (t, _) in zip(xs, labels, tables)
    ]
    empty = _to_split(xs[0][:0], labels[0][:0], group_frame(frame.iloc[:0], config.sensitive, bins))
    return Dataset(
        name=Path(source).stem,
        kind="tabular",
        train=splits[1] if len(splits) > 1 else empty,
        val=empty,
        test=splits[0],
        classes=classes,
        target=config.target,
        sensitive=list(config.sensitive),
        input_shape=(len(features),),
        feature_names=features,
        fingerprint=digest,
        split_source=f"every row of {source} (evaluation only)"
        + (f"; training rows from {tables[1][1]}" if len(tables) > 1 else ""),
        perturbable=torch.ones(len(features), dtype=torch.bool),
        lower=torch.from_numpy(xs[-1].min(axis=0)),
        upper=torch.from_numpy(xs[-1].max(axis=0)),
        positive_label=_positive_label(config, classes, config.target),
        group_bins=bins,
        notes=_ready_notes(features, len(tables) > 1),
    )


def _ready_notes(features: list[str], with_training_rows: bool) -> list[str]:
    shown = ", ".join(features[:8]) + (", ..." if len(features) > 8 else "")
    notes = [
        f"features ready (--features-ready): the model's {len(features)} inputs are the columns {shown}, as "
        "given (no imputation, no scaling); attack epsilons are in those columns' units"
    ]
    return notes if with_training_rows else [*notes, NO_TRAINING_ROWS]
