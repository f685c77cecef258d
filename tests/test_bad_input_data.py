"""Bad data through the real CLI: exit 2, one line naming the file, column or value, nothing written, no training.

Each case writes one broken file and runs ``audit train --data FILE --target T [--sensitive S] --epochs 1 --out OUT``;
a few run ``audit evaluate`` against a model trained once for the module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.cli import main
from tests.conftest import assert_bad_input, make_loans, read_report

Writer = Callable[[Path], Path]


def loans(
    change: Callable[[pd.DataFrame], pd.DataFrame] = lambda f: f, name: str = "bad.csv", **options
) -> Writer:
    """A writer of the loans table, changed, as CSV (or Parquet by its name)."""

    def write(folder: Path) -> Path:
        path = folder / name
        frame = change(make_loans())
        if name.endswith(".parquet"):
            frame.to_parquet(path)
        else:
            frame.to_csv(path, **{"index": False, **options})
        return path

    return write


def raw(content: bytes | str, name: str = "bad.csv") -> Writer:
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    return write


def nothing(folder: Path) -> Path:
    return folder / "absent.csv"


def parquet_with_names(names: list[str]) -> Writer:
    def write(folder: Path) -> Path:
        pa = pytest.importorskip(
            "pyarrow", reason="writing a Parquet file with duplicate names needs pyarrow"
        )
        pq = pytest.importorskip("pyarrow.parquet")
        frame = make_loans()
        table = pa.table([pa.array(frame[c].tolist()) for c in frame.columns], names=names)
        path = folder / "bad.parquet"
        pq.write_table(table, path)
        return path

    return write


def at(rows: list[int], column: str, value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Put ``value`` into ``column`` at these rows (the column becomes object when the value is text)."""

    def change(frame: pd.DataFrame) -> pd.DataFrame:
        text = isinstance(value, str) or not pd.api.types.is_numeric_dtype(frame[column])
        values = frame[column].astype(object if text else float)
        values.iloc[rows] = value
        return frame.assign(**{column: values})

    return change


@dataclass
class Case:
    write: Writer
    says: str
    args: tuple[str, ...] = ()
    target: str = "defaulted"
    sensitive: str | None = "sex"


HEADER = ["income", "age", "purpose", "sex", "defaulted"]

CASES = {
    # the header: duplicated names (pandas would rename the second 'sex.1'), empty names
    "duplicated-column": Case(
        loans(header=["income", "age", "sex", "sex", "defaulted"]),
        "data file {file} names column(s) 'sex' more than once ('sex' is column 3 and 4)",
    ),
    "duplicated-after-trimming": Case(
        loans(header=["income", "age", "sex", " sex ", "defaulted"]),
        "{file} names column(s) 'sex' more than once",
    ),
    "empty-header-name": Case(
        loans(header=["income", "", "purpose", "sex", "defaulted"]),
        "data file {file} has a column with no name (column 2 of the header)",
    ),
    "saved-index-column": Case(
        loans(index=True), "{file} has a column with no name (column 1 of the header)"
    ),
    "parquet-duplicated-column": Case(
        parquet_with_names(["income", "age", "sex", "sex", "defaulted"]),
        "{file} names column(s) 'sex' more than once",
    ),
    "parquet-empty-name": Case(
        parquet_with_names(["income", "", "purpose", "sex", "defaulted"]), "{file} has a column with no name"
    ),
    # a column's role
    "sensitive-is-target": Case(
        loans(), "--sensitive column 'defaulted' is the target of {file}", sensitive="defaulted"
    ),
    "categorical-is-target": Case(
        loans(), "--categorical column 'defaulted' is the target of {file}", ("--categorical", "defaulted")
    ),
    "drop-columns-is-target": Case(
        loans(), "--drop-columns column 'defaulted' is the target of {file}", ("--drop-columns", "defaulted")
    ),
    "numeric-and-categorical": Case(
        loans(),
        "column 'age' is named by both --categorical and --numeric",
        ("--numeric", "age", "--categorical", "age"),
    ),
    "categorical-names-missing-column": Case(
        loans(),
        "--categorical column 'colour' is not in {file}; columns are: income",
        ("--categorical", "colour"),
    ),
    "unknown-sensitive-column": Case(loans(), "{file} has no sensitive column 'gender'", sensitive="gender"),
    "sensitive-named-twice": Case(loans(), "--sensitive names 'sex' 2 times", sensitive="sex,sex"),
    "sensitive-single-value": Case(
        loans(lambda f: f.assign(sex="F")), "sensitive column 'sex' in {file} has a single value ('F')"
    ),
    "only-the-target-column": Case(
        loans(lambda f: f[["defaulted"]]),
        "{file} has no feature columns left after removing the target 'defaulted'",
        sensitive=None,
    ),
    # values
    "stray-text-in-numeric-column": Case(
        loans(at([3, 9], "age", "unknown")),
        "column 'age' in {file} is numeric but for 2 value(s) such as 'unknown'",
    ),
    "stray-decimal-comma": Case(
        loans(at([3], "income", "12,5")),
        "column 'income' in {file} is numeric but for 1 value(s) such as '12,5'",
    ),
    "numeric-option-on-text": Case(
        loans(),
        "column 'purpose' in {file} was declared numeric (--numeric) but 600 of its 600 values are not "
        "numbers (e.g. '",
        ("--numeric", "purpose"),
    ),
    "inf": Case(loans(at([4], "income", np.inf)), "column 'income' in {file} holds inf or -inf in 1 row(s)"),
    "inf-in-three-rows": Case(
        loans(at([4, 8, 9], "income", np.inf)), "column 'income' in {file} holds inf or -inf in 3 row(s)"
    ),
    "minus-inf": Case(
        loans(at([4], "income", -np.inf)),
        "column 'income' in {file} holds inf or -inf in 1 row(s) (first: data row 5, -inf)",
    ),
    "huge-value": Case(
        loans(at([4], "income", 1e300)),
        "column 'income' in {file} holds 1 value(s) too large to standardise (e.g. 1e+300)",
    ),
    # the target
    "target-with-one-class": Case(
        loans(lambda f: f.assign(defaulted="no")),
        "target column 'defaulted' in {file} has a single value 'no'",
    ),
    "target-with-missing-values": Case(
        loans(at([1, 2], "defaulted", np.nan)), "target column 'defaulted' in {file} has 2 missing value(s)"
    ),
    "continuous-target": Case(
        loans(lambda f: f.assign(defaulted=np.random.default_rng(1).normal(size=len(f)))),
        "target column 'defaulted' in {file} has 600 distinct values (it looks continuous)",
    ),
    "unknown-target": Case(loans(), "{file} has no target column 'risk'", target="risk"),
    # the file itself
    "empty-file": Case(raw(""), "data file {file} is empty"),
    "header-only": Case(raw(",".join(HEADER) + "\n"), "data file {file} has no data rows"),
    "binary-garbage": Case(raw(bytes(range(256)) * 8), "data file {file} is not text (it holds NUL bytes)"),
    "parquet-named-csv": Case(
        raw(b"PAR1\x15\x00\x15\x1c" * 8), "{file} is not text (it holds NUL bytes; it looks like Parquet"
    ),
    "xlsx-name": Case(raw(b"PK\x03\x04", name="loans.xlsx"), "data file {file} has an unknown type '.xlsx'"),
    "missing-file": Case(nothing, "data file {file} does not exist"),
    "not-utf8": Case(
        raw(b"income,age,purpose,sex,defaulted\n1,30,caf\xe9,F,no\n"),
        "data file {file} is not UTF-8 text (byte 0xe9 on line 2)",
    ),
    "utf16": Case(
        raw(",".join(HEADER).encode("utf-16")),
        "data file {file} is not text (it holds NUL bytes; it looks like UTF-16",
    ),
    "tab-separated-csv": Case(loans(sep="\t"), "data file {file} reads as one column named 'income\\tage"),
    "semicolon-separated-csv": Case(
        loans(sep=";"), "its fields separated by ';'; expected comma-separated values"
    ),
    "rows-wider-than-header": Case(
        raw("a,b\n" + "1,2,3\n" * 30),
        "data file {file} has rows with more fields than its header has names (2)",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_data_is_refused_in_one_line_before_training(cli, tmp_path, case):
    data = case.write(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--data", data, "--target", case.target, "--epochs", "1", "--out", out, "-q", *case.args]
    if case.sensitive:
        args += ["--sensitive", case.sensitive]
    assert_bad_input(cli(*args), out, says=case.says.format(file=data))


# --- what is accepted, with a word in the report ---


def _performance(out: Path) -> dict:
    return next(s for s in read_report(out)["sections"] if s["name"] == "performance")


def test_numeric_option_makes_stray_text_missing_with_a_note(cli, tmp_path):
    data = loans(at([3, 9], "age", "unknown"))(tmp_path)
    out = tmp_path / "run"
    result = cli(
        "train",
        "--data",
        data,
        "--target",
        "defaulted",
        "--numeric",
        "age",
        "--epochs",
        "1",
        "--out",
        out,
        "-q",
    )
    assert result.code == 0, result.err
    assert "column 'age': --numeric made 2 non-numeric value(s) such as 'unknown' missing" in " ".join(
        _performance(out)["notes"]
    )
    assert read_report(out)["run"]["data"]["missing_values"]["age"] == 2


def test_a_sensitive_column_in_drop_columns_still_groups_rows(cli, tmp_path, loans_csv):
    out = tmp_path / "run"
    args = [
        "--target",
        "defaulted",
        "--sensitive",
        "sex",
        "--drop-columns",
        "sex",
        "--epochs",
        "1",
        "--out",
        out,
    ]
    assert cli("train", "--data", loans_csv, *args, "-q").code == 0
    report = read_report(out)
    assert report["run"]["data"]["features"] == 2 + 3  # income, age, purpose one-hot: no sex
    assert any(name.startswith("fairness.sex.") for name in report["metrics"])


# --- audit evaluate against a saved model ---


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    data = loans()(folder)
    args = ["--target", "defaulted", "--sensitive", "sex,age", "--drop-sensitive", "--epochs", "1"]
    assert main(["train", "--data", str(data), *args, "--out", str(folder / "run"), "-q"]) == 0
    return folder / "run" / "model.pt"


def test_evaluate_warns_when_no_sensitive_value_was_seen_in_training(cli, tmp_path, model_file):
    shifted = loans(lambda f: f.assign(sex=np.where(f.index % 2, "U", "V"), age=f["age"] + 500))(tmp_path)
    out = tmp_path / "eval"
    result = cli("evaluate", "--model", model_file, "--data", shifted, "--out", out, "-q")
    assert result.code == 0, result.err
    warnings = _performance(out)["warnings"]
    assert (
        f"no value of sensitive column 'sex' in {shifted} occurred in the model's training data"
        in " ".join(warnings)
    )
    assert f"every value of sensitive column 'age' in {shifted} lies outside the training range [18, 79]" in (
        " ".join(warnings)
    )


def test_evaluate_notes_some_unseen_groups(cli, tmp_path, model_file):
    partial = loans(lambda f: f.assign(sex=np.where(f.index % 3, f["sex"], "U")))(tmp_path)
    out = tmp_path / "eval"
    assert cli("evaluate", "--model", model_file, "--data", partial, "--out", out, "-q").code == 0
    assert (
        f"1 group(s) of sensitive column 'sex' in {partial} did not occur in training (e.g. 'U')"
        in (_performance(out)["notes"])
    )


EVALUATE_CASES = {
    "inf": (loans(at([4], "income", np.inf)), (), "column 'income' in {file} holds inf or -inf in 1 row(s)"),
    "beyond-float32-once-standardised": (
        loans(at([4], "income", 1e100)),
        (),
        "column 'income' in {file} has value 1e+100, ",
    ),
    "stray-text": (
        loans(at([4], "income", "n.a.")),
        (),
        "numeric column(s) income in {file} hold non-numeric values (e.g. 'n.a.'); expected numbers",
    ),
    "stray-text-in-binned-sensitive": (
        loans(at([4], "age", "old")),
        (),
        "numeric column(s) age in {file} hold non-numeric values (e.g. 'old')",
    ),
    "missing-feature": (
        loans(lambda f: f.drop(columns=["purpose"])),
        (),
        "{file} lacks column(s) 'purpose' that the model was trained on",
    ),
    "sensitive-is-target": (
        loans(),
        ("--sensitive", "defaulted"),
        "--sensitive column 'defaulted' is the target",
    ),
}


@pytest.mark.parametrize("write, args, says", EVALUATE_CASES.values(), ids=EVALUATE_CASES.keys())
def test_evaluate_refuses_data_the_model_cannot_take(cli, tmp_path, model_file, write, args, says):
    data = write(tmp_path)
    out = tmp_path / "eval"
    result = cli("evaluate", "--model", model_file, "--data", data, *args, "--out", out, "-q")
    assert_bad_input(result, out, says=says.format(file=data))


def test_evaluate_numeric_option_makes_stray_text_missing(cli, tmp_path, model_file):
    data = loans(at([4], "age", "old"))(tmp_path)
    out = tmp_path / "eval"
    result = cli("evaluate", "--model", model_file, "--data", data, "--numeric", "age", "--out", out, "-q")
    assert result.code == 0, result.err
    assert "column 'age': --numeric made 1 non-numeric value(s) such as 'old' missing" in " ".join(
        _performance(out)["notes"]
    )
