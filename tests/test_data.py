import numpy as np
import pandas as pd
import pytest
import torch

from audit.config import RunConfig
from audit.data import TabularPreprocessor, load_dataset
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
