"""Large tables: features held once as float32, column-at-a-time preprocessing equal to the whole-table one,
Parquet text read as categoricals equal to CSV, chunked evaluation equal to one pass, capped audit costs."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from audit.config import RunConfig
from audit.data import MISSING, TabularPreprocessor, group_frame, load_dataset, read_table
from audit.engine import EVAL_BATCH
from audit.evaluation import per_sample_losses
from audit.groups import INTERSECTION, group_labels
from audit_plugins import mia_reference


def _table(n: int = 20_000, seed: int = 0) -> pd.DataFrame:
    """Numeric columns with missing cells, text columns of a few values (one with missing cells), a group."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{j}": rng.normal(j, 1 + j, n) for j in range(4)})
    frame.loc[rng.random(n) < 0.02, "x1"] = np.nan
    frame["k"] = rng.integers(0, 5, n)  # an integer feature
    for j, size in enumerate((2, 3, 7)):
        frame[f"c{j}"] = np.array([f"v{i}" for i in range(size)], dtype=object)[rng.integers(0, size, n)]
    frame.loc[rng.random(n) < 0.01, "c2"] = None
    frame["g"] = np.array(["a", "b", "c"], dtype=object)[rng.integers(0, 3, n)]
    logit = frame["x0"].fillna(0) - 0.5 + (frame["c1"] == "v1") + 0.3 * (frame["g"] == "b")
    frame["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "table.parquet"
    _table().to_parquet(path, index=False)
    return path


def _load(path, **options):
    return load_dataset(RunConfig(data=str(path), target="y", sensitive=["g"], **options))


def test_features_are_float32_and_held_once(parquet):
    data = _load(parquet)
    splits = (data.train, data.val, data.test)
    assert all(s.x.dtype == torch.float32 and s.x.is_contiguous() for s in splits)
    # the splits are consecutive row ranges of one matrix: each starts where the one before ends
    for before, after in zip(splits, splits[1:]):
        assert before.x.data_ptr() + before.x.nbytes == after.x.data_ptr()
    assert [type(v) for v in vars(data).values() if isinstance(v, pd.DataFrame)] == []  # no frame kept


def test_parquet_text_is_read_as_categoricals(parquet):
    frame, _ = read_table(str(parquet))
    assert all(isinstance(frame[c].dtype, pd.CategoricalDtype) for c in ("c0", "c1", "c2", "g"))
    assert frame["x0"].dtype == np.float64


def test_parquet_loads_exactly_as_the_same_table_as_csv(tmp_path, parquet):
    csv = tmp_path / "table.csv"
    _table().to_csv(csv, index=False)
    a, b = _load(parquet), _load(csv)
    for name in ("train", "val", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y) and sa.groups.equals(sb.groups)
    counts = _table().isna().sum()
    assert a.schema() == b.schema() and a.missing_counts == b.missing_counts == {
        "x1": counts["x1"],
        "c2": counts["c2"],
    }


def _as_category(column):
    """The per-row text conversion used before (every row converted to its string)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(object)
    return column.astype("string").fillna(MISSING).astype(str)


def _whole_table_fit(frame, numeric, categorical):
    """The preprocessing as it was before, on the whole frame at once (the reference the new one must equal)."""
    values = frame[numeric].astype("float64")
    medians = values.median().fillna(0.0)
    filled = values.fillna(medians)
    stds = filled.std(ddof=0).replace(0.0, 1.0).fillna(1.0)
    categories = [sorted(_as_category(frame[col]).unique().tolist()) for col in categorical]
    return medians.tolist(), filled.mean().tolist(), stds.tolist(), categories


def _whole_table_transform(pre, frame):
    blocks = []
    values = frame[pre.numeric].astype("float64").to_numpy()
    values = np.where(np.isnan(values), np.asarray(pre.medians), values)
    blocks.append((values - np.asarray(pre.means)) / np.asarray(pre.stds))
    for col, cats in zip(pre.categorical, pre.categories):
        codes = pd.Categorical(_as_category(frame[col]), categories=cats).codes
        onehot = np.zeros((len(frame), len(cats)))
        onehot[np.flatnonzero(codes >= 0), codes[codes >= 0]] = 1.0
        blocks.append(onehot)
    return np.concatenate(blocks, axis=1).astype(np.float32)


@pytest.mark.parametrize("source", ["csv", "parquet", "adult"])
def test_column_at_a_time_preprocessing_equals_the_whole_table_one(tmp_path, source):
    if source == "adult":
        from audit import datasets

        frame = datasets.load_adult()[0]
        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        categorical = [c for c in frame.columns if c not in numeric and c != "income"]
    else:
        path = tmp_path / f"t.{source}"
        _table().to_csv(path, index=False) if source == "csv" else _table().to_parquet(path, index=False)
        frame = read_table(str(path))[0]
        numeric, categorical = ["x0", "x1", "x2", "x3", "k"], ["c0", "c1", "c2", "g"]
    rows = np.random.default_rng(1).permutation(len(frame))[: len(frame) * 2 // 3]
    pre = TabularPreprocessor.fit(frame, numeric=numeric, categorical=categorical, rows=rows)
    part = frame.iloc[rows]
    assert (pre.medians, pre.means, pre.stds, pre.categories) == _whole_table_fit(part, numeric, categorical)
    assert np.array_equal(pre.transform(frame, rows=rows), _whole_table_transform(pre, part))  # bit for bit
    assert np.array_equal(pre.transform(frame), _whole_table_transform(pre, frame))


def test_categorical_columns_give_the_strings_of_their_values():
    values = pd.Series(["b", None, "a", MISSING, "b"], dtype=object)
    text, coded = pd.DataFrame({"c": values}), pd.DataFrame({"c": values.astype("category")})
    expected = ["b", MISSING, "a", MISSING, "b"]
    assert (
        group_frame(coded, ["c"], {})["c"].tolist() == group_frame(text, ["c"], {})["c"].tolist() == expected
    )
    fitted = [TabularPreprocessor.fit(f, numeric=[], categorical=["c"]) for f in (text, coded)]
    assert fitted[0].categories == fitted[1].categories == [[MISSING, "a", "b"]]
    assert np.array_equal(fitted[0].transform(text), fitted[1].transform(coded))
    numbers = pd.DataFrame({"n": pd.Series([3, 1, 3], dtype="category")})
    assert group_frame(numbers, ["n"], {})["n"].tolist() == ["3", "1", "3"]


@pytest.mark.parametrize("rows", [2 * EVAL_BATCH + 5, 17])
def test_chunked_per_sample_losses_equal_one_pass(rows):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(rows, 6), torch.randint(0, 3, (rows,))
    whole = per_sample_losses(model, x, y, torch.device("cpu"), chunk_rows=rows)
    assert torch.equal(per_sample_losses(model, x, y, torch.device("cpu"), chunk_rows=EVAL_BATCH), whole)
    assert torch.allclose(
        per_sample_losses(model, x, y, torch.device("cpu"), chunk_rows=1000), whole, atol=1e-6
    )


def test_intersection_labels_equal_joining_row_by_row():
    rng = np.random.default_rng(0)
    groups = pd.DataFrame(
        {
            "sex": np.array(["F", "M"], dtype=object)[rng.integers(0, 2, 500)],
            "race": np.array(["x", "y&z", "w"], dtype=object)[rng.integers(0, 3, 500)],
            "age": rng.integers(0, 4, 500),
        }
    )
    for columns in (["sex", "race"], ["race", "age", "sex"]):
        joined = groups[columns].astype(str).agg(INTERSECTION.join, axis=1).to_numpy()
        assert group_labels(groups, columns).tolist() == joined.tolist()


def test_reference_models_train_on_at_most_their_row_cap(parquet, monkeypatch):
    data = _load(parquet)
    monkeypatch.setattr(mia_reference, "MAX_ROWS_PER_MODEL", 500)
    config = dataclasses.replace(RunConfig(data=str(parquet), target="y", epochs=1), resolved=False)
    config.resolve(train_rows=len(data.train), plugin_defaults={})
    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(data.input_shape[0], 2))
    plan = mia_reference.plan_reference_rows(len(data.test), np.arange(50), seed=0)
    scores = mia_reference.reference_scores(
        config=config,
        dataset=data,
        target=target,
        members=np.arange(50),
        plan=plan,
        models=2,
        device=torch.device("cpu"),
    )
    assert scores.rows_per_model == 500 and scores.pool_rows == len(data.test) - 50
    assert mia_reference._capped(data.test, 0).x.shape == (500, data.input_shape[0])


def test_reference_predictions_in_chunks_equal_one_call():
    from sklearn.linear_model import LogisticRegression

    from audit.reference import predict_in_chunks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 5)).astype(np.float32)
    model = LogisticRegression().fit(x, (x[:, 0] + rng.normal(size=1000) > 0).astype(int))
    assert np.array_equal(predict_in_chunks(model, x, chunk_rows=64), model.predict(x))


@pytest.mark.parametrize(
    "values",
    [
        [0, 1, 1, 0],
        [1.0, 2.5, 1.0, 2.5],
        [True, False, True, True],
        ["x ", " y", "x ", " y"],
        [1, "a", 2, "a"],
    ],
)
def test_target_codes_equal_coding_every_row_as_text(values):
    column = pd.Series(values * 10, dtype="category" if isinstance(values[1], str) else None)
    frame = pd.DataFrame({"y": column, "f": np.arange(len(column), dtype=float)})
    data = load_dataset(RunConfig(data="t", target="y"), frame=frame)
    labels = column.astype(str).str.strip()  # the coding before: every row's text, then its class
    coded = np.bincount(pd.Categorical(labels, categories=data.classes).codes)
    rows = torch.cat([data.train.y, data.val.y, data.test.y]).numpy()
    assert np.array_equal(np.bincount(rows), coded) and (coded > 0).all()


def test_numbers_as_text_in_parquet_load_as_from_csv_with_numeric(tmp_path):
    frame = _table(2000)
    frame["n"] = frame["x0"].round(2).astype(str)
    frame.loc[5, "n"] = "unknown"
    frame[["n", "c0", "g", "y"]].to_parquet(tmp_path / "t.parquet", index=False)
    frame[["n", "c0", "g", "y"]].to_csv(tmp_path / "t.csv", index=False)
    a, b = (_load(tmp_path / f"t.{kind}", numeric=["n"]) for kind in ("parquet", "csv"))
    assert torch.equal(a.train.x, b.train.x) and a.schema() == b.schema() and a.notes == b.notes
    assert "unknown" in a.notes[0]
