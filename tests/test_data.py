import numpy as np
import pandas as pd
import pytest
import torch

from audit.config import RunConfig
from audit.data import TabularPreprocessor, load_dataset, read_table
from audit.errors import AuditError
from tests.conftest import make_loans


def test_adult_uses_its_own_split_and_counts_missing_values():
    data = load_dataset(RunConfig(sensitive=["sex", "race"]))
    assert len(data.test) == 16281
    assert len(data.train) + len(data.val) == 32561
    assert data.positive_label == ">50K"
    assert data.missing_counts["occupation"] > 0
    assert set(data.test.groups["sex"]) == {"Male", "Female"}


def test_preprocessing_is_fitted_on_the_training_split_only():
    frame = pd.DataFrame({"a": [0.0, 2.0, 100.0], "c": ["x", "y", "z"]})
    pre = TabularPreprocessor.fit(frame.iloc[:2], numeric=["a"], categorical=["c"])
    assert pre.means == [1.0] and pre.categories == [["x", "y"]]
    out = pre.transform(frame)
    assert out.shape == (3, 3)
    assert out[2, 0] == pytest.approx(99.0)  # (100 - 1) / 1
    assert out[2, 1:].sum() == 0  # an unseen category is all zeros


def test_csv_split_is_stratified_and_seeded(loans_csv):
    config = RunConfig(data=str(loans_csv), target="defaulted", sensitive=["sex"], seed=3)
    a, b = load_dataset(config), load_dataset(config)
    assert torch.equal(a.test.x, b.test.x)
    assert len(a.train) + len(a.val) + len(a.test) == 600
    rates = [float(s.y.float().mean()) for s in (a.train, a.test)]
    assert abs(rates[0] - rates[1]) < 0.05
    assert a.missing_counts == {"income": 10}
    assert not torch.isnan(a.train.x).any()


def test_numeric_sensitive_column_is_binned(loans_csv):
    data = load_dataset(RunConfig(data=str(loans_csv), target="defaulted", sensitive=["age"]))
    assert data.test.groups["age"].nunique() <= 4
    assert "age" in data.group_bins


def test_digits_images_are_in_unit_range():
    data = load_dataset(RunConfig(data="digits"))
    assert data.train.x.shape[1:] == (1, 8, 8)
    assert float(data.train.x.min()) >= 0 and float(data.train.x.max()) <= 1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.assign(defaulted=f["defaulted"].where(f.index > 2)), "missing value"),
        (lambda f: f.assign(sex="F"), "single value"),
        (lambda f: f.drop(columns=["sex"]), "no sensitive column"),
        (lambda f: f.drop(columns=["defaulted"]), "no target column"),
        (lambda f: f.head(8), "expected at least 10 rows of every class of 'defaulted'"),
    ],
)
def test_bad_tables_are_refused(tmp_path, change, message):
    path = tmp_path / "bad.csv"
    change(make_loans()).to_csv(path, index=False)
    with pytest.raises(AuditError, match=message):
        load_dataset(RunConfig(data=str(path), target="defaulted", sensitive=["sex"]))


def test_parquet_reads_like_csv(tmp_path):
    path = tmp_path / "loans.parquet"
    make_loans().to_parquet(path)
    data = load_dataset(RunConfig(data=str(path), target="defaulted", sensitive=["sex"]))
    assert data.input_shape == (2 + 3 + 2,)
    assert np.isfinite(data.test.x.numpy()).all()


def test_text_in_a_numeric_column_names_that_column_and_a_value():
    frame = make_loans(50)
    prep = TabularPreprocessor.fit(frame, numeric=["income", "age"], categorical=["purpose"])
    bad = frame.assign(age=frame["age"].astype(object))
    bad.loc[3, "age"] = "old"
    with pytest.raises(AuditError, match=r"numeric column\(s\) age hold non-numeric values \(e.g. 'old'\)"):
        prep.transform(bad)  # income's missing values are imputed, not blamed


# --- Hardening: every bad value is refused (or warned about) naming the file, the column and the value ---


def _csv(tmp_path, frame, name="bad.csv", **options):
    path = tmp_path / name
    frame.to_csv(path, index=False, **options)
    return path


def _load(path, target="defaulted", **options):
    return load_dataset(RunConfig(data=str(path), target=target, **options))


@pytest.mark.parametrize(
    "header, message",
    [
        (
            ["income", "age", "sex", "sex", "defaulted"],
            r"names column\(s\) 'sex' more than once \('sex' is column 3 and 4\)",
        ),
        (["income", "age", "sex", "sex ", "defaulted"], "'sex' more than once"),  # equal once trimmed
        (["income", "", "purpose", "sex", "defaulted"], r"a column with no name \(column 2 of the header\)"),
        (["income", "age", "purpose", "sex", " "], r"a column with no name \(column 5 of the header\)"),
    ],
)
def test_a_header_naming_a_column_twice_or_not_at_all_is_refused(tmp_path, header, message):
    path = _csv(tmp_path, make_loans(60), header=header)
    with pytest.raises(AuditError, match=message):
        read_table(str(path))


def test_a_saved_index_is_named_as_the_likely_cause(tmp_path):
    path = tmp_path / "indexed.csv"
    make_loans(60).to_csv(path)  # index=True: the header starts with an empty name
    with pytest.raises(AuditError, match=r"column 1 of the header.*index=False"):
        read_table(str(path))


def test_a_real_column_named_like_a_pandas_rename_is_kept(tmp_path):
    frame = make_loans(60).rename(columns={"purpose": "sex.1"})
    read, _ = read_table(str(_csv(tmp_path, frame)))
    assert list(read.columns) == list(frame.columns)


def test_parquet_with_a_duplicated_or_empty_column_name_is_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    for names, message in ((["sex", "sex", "y"], "'sex' more than once"), (["", "sex", "y"], "no name")):
        path = tmp_path / "bad.parquet"
        pq.write_table(
            pa.table([pa.array([1, 2]), pa.array(["F", "M"]), pa.array([0, 1])], names=names), path
        )
        with pytest.raises(AuditError, match=message):
            read_table(str(path))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"income,age\x00\x01\x02", r"is not text \(it holds NUL bytes\)"),
        (b"PAR1\x00\x00\x15\x04", "looks like Parquet"),
        ("income,sex\n1,F\n".encode("utf-16"), "UTF-16"),
        ("income,city\n1,Köln\n2,Zürich\n".encode("latin-1"), r"is not UTF-8 text \(byte 0xf6 on line 2\)"),
        (b"income,sex\n1,F,x\n2,M,y\n", r"rows with more fields than its header has names \(2\)"),
        (b"income;sex;y\n1;F;0\n2;M;1\n", "one column named 'income;sex;y', its fields separated by ';'"),
    ],
)
def test_a_file_that_is_not_a_comma_separated_utf8_table_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(AuditError, match=message):
        read_table(str(path))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(sensitive=["defaulted"]), "--sensitive column 'defaulted' is the target of"),
        (dict(categorical=["defaulted"]), "--categorical column 'defaulted' is the target of"),
        (dict(numeric=["defaulted"]), "--numeric column 'defaulted' is the target of"),
        (dict(drop_columns=["defaulted"]), "--drop-columns column 'defaulted' is the target of"),
        (dict(categorical=["age"], numeric=["age"]), "'age' is named by both --categorical and --numeric"),
        (
            dict(categorical=["colour"]),
            r"--categorical column 'colour' is not in .*loans.csv; columns are: income",
        ),
        (dict(sensitive=["sex", "sex"]), "--sensitive names 'sex' 2 times"),
    ],
)
def test_a_column_option_naming_the_target_or_nothing_is_refused(loans_csv, options, message):
    with pytest.raises(AuditError, match=message):
        _load(loans_csv, **options)


def test_a_sensitive_column_also_dropped_is_no_feature_but_still_groups(loans_csv):
    data = _load(loans_csv, sensitive=["sex"], drop_columns=["sex"])
    assert not any(name.startswith("sex") for name in data.feature_names)
    assert set(data.test.groups["sex"]) == {"F", "M"}


def _stray(n_numbers: int, strays: list[str]) -> pd.DataFrame:
    frame = make_loans(n_numbers + len(strays))
    age = frame["age"].astype(object)
    age.iloc[: len(strays)] = strays
    return frame.assign(age=age)


def test_a_numeric_column_with_stray_text_is_refused_naming_count_and_value(tmp_path):
    path = _csv(tmp_path, _stray(200, ["unknown", "12,5", "unknown"]))
    with pytest.raises(
        AuditError,
        match=r"column 'age' in .*bad.csv is numeric but for 3 value\(s\) such as "
        r"'unknown' \(200 numbers\); expected numbers only: pass --numeric age",
    ):
        _load(path)


def test_a_text_column_with_some_numbers_stays_categorical(tmp_path):
    data = _load(_csv(tmp_path, _stray(120, ["old", "young"] * 10)))  # 86% numbers: not over 90%
    assert "age" in data.preprocessor.categorical


def test_numeric_option_makes_stray_text_missing_and_says_so(tmp_path):
    path = _csv(tmp_path, _stray(200, ["unknown", "12,5"]))
    data = _load(path, numeric=["age"])
    assert "age" in data.preprocessor.numeric and data.missing_counts["age"] == 2
    assert any(
        "'age': --numeric made 2 non-numeric value(s) such as 'unknown' missing" in n for n in data.notes
    )
    assert np.isfinite(data.train.x.numpy()).all()


def test_numeric_option_on_a_text_column_is_refused(loans_csv):
    with pytest.raises(
        AuditError, match=r"'purpose' in .* was declared numeric \(--numeric\) but 600 of its 600"
    ):
        _load(loans_csv, numeric=["purpose"])


@pytest.mark.parametrize(
    "value, message",
    [
        (np.inf, r"column 'income' in .*bad.csv holds inf or -inf in 2 row\(s\) \(first: data row 4, inf\)"),
        (-np.inf, r"holds inf or -inf in 2 row\(s\) \(first: data row 4, -inf\)"),
        (1e300, r"column 'income' in .*bad.csv holds 2 value\(s\) too large to standardise \(e.g. 1e\+300\)"),
    ],
)
def test_non_finite_or_huge_numbers_are_refused_before_training(tmp_path, value, message):
    frame = make_loans()
    frame.loc[[3, 500], "income"] = value
    with pytest.raises(AuditError, match=message):
        _load(_csv(tmp_path, frame))


def test_inf_in_a_numeric_sensitive_column_is_refused(tmp_path):
    frame = make_loans().astype({"age": float})
    frame.loc[7, "age"] = np.inf
    with pytest.raises(AuditError, match="column 'age' in .* holds inf or -inf in 1 row"):
        _load(_csv(tmp_path, frame), sensitive=["age"], drop_columns=["age"])


def test_large_but_workable_numbers_are_accepted(tmp_path):
    frame = make_loans()
    frame.loc[3, "income"] = 1e140
    data = _load(_csv(tmp_path, frame))
    assert np.isfinite(data.train.x.numpy()).all()


def test_a_continuous_target_is_named_as_such(tmp_path):
    frame = make_loans().assign(defaulted=np.random.default_rng(0).normal(size=600))
    with pytest.raises(
        AuditError,
        match=r"target column 'defaulted' in .* has 600 distinct values \(it looks "
        r"continuous\), 600 of them on a single row; rai-audit trains classifiers",
    ):
        _load(_csv(tmp_path, frame))


def test_a_file_with_only_the_target_column_is_refused(tmp_path):
    with pytest.raises(
        AuditError,
        match=r"bad.csv has no feature columns left after removing the target "
        r"'defaulted'.*columns are: defaulted",
    ):
        _load(_csv(tmp_path, make_loans()[["defaulted"]]))


# --- Evaluate: a saved model's schema against a new file ---


def _schema(loans_csv, **options):
    return _load(loans_csv, **options).schema()


def test_schema_saves_the_training_groups_of_categorical_sensitive_columns(loans_csv):
    schema = _schema(loans_csv, sensitive=["sex", "age"])
    assert schema["group_values"] == {"sex": ["F", "M"]} and "age" in schema["group_bins"]


def test_evaluate_warns_when_no_sensitive_value_was_seen_in_training(tmp_path, loans_csv):
    schema = _schema(loans_csv, sensitive=["sex", "age"], drop_sensitive=True)
    frame = make_loans()
    shifted = frame.assign(sex=np.where(frame.index % 2, "U", "V"), age=frame["age"] + 500)
    data = load_dataset(RunConfig(data=str(_csv(tmp_path, shifted)), sensitive=["sex", "age"]), schema=schema)
    assert data.warnings == [
        "no value of sensitive column 'sex' in "
        + str(tmp_path / "bad.csv")
        + " occurred in the model's training "
        "data (e.g. 'U'; training had 'F', 'M'); its groups are ones the model never saw",
        "every value of sensitive column 'age' in "
        + str(tmp_path / "bad.csv")
        + " lies outside the training "
        "range [18, 79]; its groups are only the outer training bins",
    ]


def test_evaluate_notes_some_unseen_groups_and_falls_back_to_the_features_categories(tmp_path, loans_csv):
    schema = _schema(loans_csv, sensitive=["purpose"])
    del schema["group_values"]  # a model file written before group_values: the feature's categories serve
    frame = make_loans()
    path = _csv(tmp_path, frame.assign(purpose=np.where(frame.index % 3, frame["purpose"], "boat")))
    data = load_dataset(RunConfig(data=str(path), sensitive=["purpose"]), schema=schema)
    assert data.warnings == []
    assert any("1 group(s) of sensitive column 'purpose'" in n and "'boat'" in n for n in data.notes)


def test_evaluate_refuses_stray_text_unless_numeric_is_given(tmp_path, loans_csv):
    schema = _schema(loans_csv)
    path = _csv(tmp_path, _stray(598, ["old", "young"]))
    with pytest.raises(
        AuditError,
        match=r"numeric column\(s\) age in .*bad.csv hold non-numeric values "
        r"\(e.g. 'old'\).*--numeric age makes them missing",
    ):
        load_dataset(RunConfig(data=str(path)), schema=schema)
    data = load_dataset(RunConfig(data=str(path), numeric=["age"]), schema=schema)
    assert data.missing_counts["age"] == 2 and any("--numeric made 2" in n for n in data.notes)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda f: f.assign(income=f["income"].where(f.index != 5, np.inf)),
            "'income' in .* holds inf or -inf",
        ),
        (
            lambda f: f.assign(income=f["income"].where(f.index != 5, 1e100)),
            r"value 1e\+100, .* standard "
            "deviations from the training mean",
        ),
        (lambda f: f.drop(columns=["age"]), r"lacks column\(s\) 'age' that the model was trained on"),
    ],
)
def test_evaluate_refuses_values_the_model_cannot_take(tmp_path, loans_csv, change, message):
    schema = _schema(loans_csv)
    path = _csv(tmp_path, change(make_loans()))
    with pytest.raises(AuditError, match=message):
        load_dataset(RunConfig(data=str(path)), schema=schema)


def test_a_standardisation_that_overflows_is_refused_even_past_the_magnitude_guard(tmp_path, monkeypatch):
    import audit.data

    monkeypatch.setattr(audit.data, "MAX_ABS_VALUE", float("inf"))  # the second line of defence, alone
    frame = make_loans()
    frame.loc[[3, 500], "income"] = 1e300
    with (
        np.errstate(over="ignore"),
        pytest.raises(
            AuditError, match=r"column 'income' in .*bad.csv cannot be standardised \(mean .*, std inf"
        ),
    ):
        _load(_csv(tmp_path, frame))


# --- features ready (a model trained elsewhere) -------------------------------------------------------------------


def _ready_frames():
    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame(
        {
            "b": rng.normal(size=n),
            "sex": rng.choice(["F", "M"], n),
            "flag": rng.random(n) < 0.5,
            "a": rng.normal(size=n),
            "age": rng.integers(18, 80, n),
            "y": rng.choice(["lo", "mid"], n),
        }
    )
    return frame.iloc[:80].reset_index(drop=True), frame.iloc[80:].reset_index(drop=True)


def test_features_ready_feeds_the_columns_as_they_are_in_file_order():
    from audit.data import load_ready_dataset

    train, test = _ready_frames()
    config = RunConfig(
        command="evaluate", data="t", target="y", sensitive=["sex", "age"], features_ready=True
    )
    data = load_ready_dataset(config, frame=test, train_frame=train)
    assert data.feature_names == ["b", "flag", "a"]  # every column but the target and the groups, file order
    expected = test[["b", "flag", "a"]].to_numpy(dtype=np.float32)
    assert torch.equal(data.test.x, torch.from_numpy(expected))  # not imputed, not scaled, not encoded
    assert torch.equal(data.train.x, torch.from_numpy(train[["b", "flag", "a"]].to_numpy(dtype=np.float32)))
    assert len(data.val) == 0 and data.preprocessor is None
    # age has many values: grouped into quartiles of the training rows, which also bound the attacks
    assert data.group_bins["age"][0] == train["age"].min()
    assert data.upper[0] == pytest.approx(train["b"].max())


def test_features_ready_codes_classes_over_both_tables_and_orders_the_named_features():
    from audit.data import load_ready_dataset

    train, test = _ready_frames()
    test.loc[0, "y"] = "hi"  # a class only the evaluation rows hold still gets its own logit index
    config = RunConfig(
        command="evaluate", data="t", target="y", sensitive=["sex"], features=["a", "sex_code", "b"]
    )
    for frame in (train, test):
        frame["sex_code"] = (frame["sex"] == "M").astype(float)
    data = load_ready_dataset(config, frame=test, train_frame=train)
    assert data.classes == ["hi", "lo", "mid"] and data.input_shape == (3,)
    assert data.feature_names == ["a", "sex_code", "b"]
    assert data.test.x[0].tolist() == pytest.approx(
        test.loc[0, ["a", "sex_code", "b"]].astype(float).tolist()
    )
    assert "training rows" not in " ".join(data.notes)  # they were given


def test_features_ready_without_training_rows_says_so_and_refuses_missing_cells():
    from audit.data import load_ready_dataset

    _, test = _ready_frames()
    config = RunConfig(command="evaluate", data="t", target="y", sensitive=["sex", "age"])
    data = load_ready_dataset(config, frame=test)
    assert len(data.train) == 0 and any("--train-data" in note for note in data.notes)
    test.loc[5, "a"] = np.nan
    with pytest.raises(AuditError, match="'a' in t has 1 missing value"):
        load_ready_dataset(config, frame=test)
