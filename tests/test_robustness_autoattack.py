"""AutoAttack and its components: the cascade equals torchattacks' own AutoAttack row by row, is never weaker than
PGD-10, runs on tabular rows through a view any subset of rows can be fed through, and reaches the report."""

import pytest
import torch

from audit import AuditError
from audit.config import RunConfig
from audit.data import load_dataset
from audit.engine import train
from audit.models import model_spec
from audit.training import attach_scheduler, build_setup, seed_everything
from audit_plugins.robustness import (
    PGD_ONLY_LINE,
    audit_configure,
    check_classes,
    eps_segment,
)
from audit_plugins.robustness_attacks import attack_target, clean_pass, independent, sweep
from audit_plugins.robustness_autoattack import KeyedView, components_of, keyed_target, sweep_family
from tests.conftest import read_report, robustness_section_of_a_linear_model, undeclared_metrics

EPS = [0.05, 0.1]
QUERIES = (
    100  # Square's 5,000 queries cost minutes on a CPU; both sides of each comparison get the same number
)


@pytest.fixture(scope="module")
def digits_cnn():
    """A small CNN trained on digits for a few epochs, and 40 test rows."""
    config = RunConfig(data="digits", epochs=3, patience=None)
    data = load_dataset(config)
    gen = seed_everything(0)
    spec = model_spec(
        input_shape=data.input_shape, num_classes=10, name="cnn", hidden=[], channels=[8, 16], dropout=0.0
    )
    setup = build_setup(config, data, torch.device("cpu"), gen, spec)
    attach_scheduler(setup)
    train(setup, progress=False)
    return setup.base_model.eval(), data, data.test.x[:40], data.test.y[:40]


def torchattacks_autoattack(model, images, labels, eps):
    """torchattacks' own AutoAttack (standard version, seed 0), its Square given ``QUERIES`` queries."""
    import torchattacks

    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    square = attack._autoattack.attacks[-1]
    assert type(square).__name__ == "Square" and square.n_queries == 5000
    square.n_queries = QUERIES
    with torch.no_grad():
        return model(attack(images, labels)).argmax(1) == labels


@pytest.mark.slow  # APGD-T and FAB-T each try 9 target classes: minutes on a loaded 2-core machine
def test_cascade_equals_torchattacks_autoattack_row_by_row_and_is_no_weaker_than_pgd(digits_cnn):
    model, data, x, y = digits_cnn
    target = keyed_target(model, data, x, perturb_categorical=False, eps_max=max(EPS))
    correct = clean_pass(target, y, with_grad=False)[0]
    run = sweep_family(target, y, "autoattack", EPS, seed=0, num_classes=10, correct=correct, queries=QUERIES)
    # First epsilon: torchattacks' AutoAttack on every row, exactly as the user would run it.
    assert torch.equal(run.masks[EPS[0]], torchattacks_autoattack(model, x, y, EPS[0]))
    # Later epsilons: the same AutoAttack on the rows still standing (the others were fooled at a smaller epsilon).
    standing = run.masks[EPS[0]]
    assert 0 < int(standing.sum()) < int(correct.sum())
    robust = torchattacks_autoattack(model, x[standing], y[standing], EPS[1])
    assert torch.equal(run.masks[EPS[1]][standing], robust) and not run.masks[EPS[1]][~standing].any()
    assert sum(run.fooled_by[EPS[0]].values()) == int(correct.sum() - standing.sum())
    pgd_target = attack_target(model, data, x, perturb_categorical=False)
    kw = dict(steps=10, alpha=0.25, random_start=False, seed=0)
    pgd, fresh = sweep(pgd_target, y, "pgd", EPS, **kw), independent(pgd_target, y, "pgd", EPS, **kw)
    for eps in EPS:
        assert run.masks[eps].sum() <= pgd[eps].sum() and run.masks[eps].sum() <= fresh[eps].sum()


def test_a_component_cascades_over_epsilons_as_torchattacks_runs_it_row_by_row(digits_cnn):
    import torchattacks

    model, data, x, y = digits_cnn
    target = keyed_target(model, data, x, perturb_categorical=False, eps_max=max(EPS))
    correct = clean_pass(target, y, with_grad=False)[0]
    run = sweep_family(target, y, "apgd-ce", EPS, seed=0, num_classes=10, correct=correct)
    standing = correct
    # at each epsilon, torchattacks' APGD on the rows still standing, called as a user would call it
    for eps in EPS:
        attack = torchattacks.APGD(model, norm="Linf", eps=eps, seed=0, loss="ce", n_restarts=1)
        adv = attack(x[standing], y[standing])
        with torch.no_grad():
            robust = model(adv).argmax(1) == y[standing]
        assert torch.equal(run.masks[eps][standing], robust) and not run.masks[eps][~standing].any()
        assert run.fooled_by[eps] == {"apgd-ce": int((~robust).sum())}
        standing = run.masks[eps]
    pgd = sweep(
        attack_target(model, data, x, perturb_categorical=False),
        y,
        "pgd",
        EPS,
        steps=10,
        alpha=0.25,
        random_start=False,
        seed=0,
    )
    assert 0 < int(run.masks[EPS[0]].sum()) and all(run.masks[e].sum() <= pgd[e].sum() + 1 for e in EPS)


def test_keyed_view_feeds_any_subset_of_tabular_rows_and_moves_only_numeric_features():
    import torchattacks

    data = load_dataset(RunConfig(sensitive=["sex"]))
    torch.manual_seed(0)
    model = torch.nn.Linear(data.input_shape[0], 2).eval()
    x, y = data.test.x[:64], data.test.y[:64]
    target = keyed_target(model, data, x, perturb_categorical=False, eps_max=1.0)
    view, numeric = target.module, data.perturbable
    assert isinstance(view, KeyedView) and view.keyed and view.count > 1
    assert target.inputs.shape == (64, 1, 1, int(numeric.sum()) + 1)
    assert float(target.inputs.min()) >= 0 and float(target.inputs.max()) <= 1
    clamped = x[:, numeric].clamp(data.lower[numeric], data.upper[numeric])
    rows = torch.tensor(
        [5, 3, 60, 3]
    )  # any subset, any order, repeats: each row keeps its own one-hot columns
    back = view.to_input(target.inputs[rows])
    assert torch.equal(back[:, ~numeric], x[rows][:, ~numeric])
    assert torch.allclose(back[:, numeric], clamped[rows], atol=1e-4)
    # the largest move epsilon allows, on every coordinate, leaves each key on its own pattern
    eps_view = 1.0 / target.eps_scale
    for sign in (1, -1):
        moved = view.to_input((target.inputs + sign * eps_view).clamp(0, 1))
        assert torch.equal(moved[:, ~numeric], x[:, ~numeric])
    for eps in (
        0.1,
        1.0,
    ):  # torchattacks' APGD picks its rows itself: one-hot columns stay, numbers move <= eps
        adv = torchattacks.APGD(view, norm="Linf", eps=eps / target.eps_scale, seed=0)(target.inputs, y)
        moved = view.to_input(adv)
        assert torch.equal(moved[:, ~numeric], x[:, ~numeric])
        start = view.to_input(target.inputs)[:, numeric]
        assert float((moved[:, numeric] - start).abs().max().detach()) <= eps + 1e-4


def test_binary_tables_run_autoattack_without_apgd_t_and_refuse_it_by_name():
    assert components_of("autoattack", 2) == ("apgd-ce", "fab", "square")
    assert components_of("autoattack-l2", 10) == ("apgd-ce", "apgd-dlr", "fab", "square")
    assert components_of("autoattack-l2", 2, image=False) == ("apgd-ce", "fab")
    with pytest.raises(AuditError, match="--attack square-l2 needs image data"):
        check_classes(("square-l2",), 2, image=False)
    with pytest.raises(AuditError, match="apgd-dlr-l2: APGD-T's targeted DLR loss needs at least 4 classes"):
        check_classes(("pgd", "apgd-dlr-l2"), 2)
    check_classes(("apgd-dlr",), 10)


@pytest.fixture(scope="module")
def adult_autoattack_section():
    """The plugin's section on Adult for a quickly fitted linear model, with AutoAttack (L-inf and L2) and PGD."""
    options = {
        "robustness": "eval",
        "attack": "pgd,autoattack,autoattack-l2",
        "eps": [0.1, 0.5],
        "pgd_steps": 3,
    }
    config = RunConfig(quiet=True, options={**options, "robustness_samples": 60, "square_queries": 30})
    audit_configure(config)
    return robustness_section_of_a_linear_model(config, steps=60)


def test_the_headline_is_the_worst_over_every_attack(adult_autoattack_section):
    section = adult_autoattack_section
    data, m = section.data, section.metrics
    assert data["autoattack"]["autoattack"]["components"] == ["apgd-ce", "fab", "square"]
    assert data["autoattack"]["autoattack-l2"]["components"] == ["apgd-ce", "fab"]
    assert any("APGD-T was left out of AutoAttack" in note for note in section.notes)
    assert any("Square was left out of AutoAttack under L2" in note for note in section.notes)
    for i, eps in enumerate(data["eps"]):
        per_attack = [m[f"robustness.{a}.{eps_segment(eps)}.robust_accuracy"] for a in ("pgd", "autoattack")]
        per_attack.append(m[f"robustness.autoattack-l2.{eps_segment(eps)}.robust_accuracy"])
        worst = m[f"robustness.{eps_segment(eps)}.robust_accuracy"]
        assert worst == data["worst"]["robust_accuracy"][i] <= min(per_attack)
        assert m[f"robustness.{eps_segment(eps)}.robust_accuracy.ci_low"] <= worst
    # the middle epsilon's worst figure leads the section's metrics: the overview shows the first headline
    assert next(iter(m)) == f"robustness.{eps_segment(data['eps'][1])}.robust_accuracy"
    assert PGD_ONLY_LINE not in section.summary
    assert data["group_reference"]["attack"] == "autoattack"


def test_cli_autoattack_end_to_end_and_the_pgd_only_warning(tmp_path, cli):
    out = tmp_path / "aa"
    args = ["--robustness", "--attack", "autoattack", "--eps", "0.3", "--robustness-samples", "20"]
    result = cli(
        "train", "--data", "digits", "--epochs", "2", *args, "--square-queries", "20", "--out", out, "-q"
    )
    assert result.code == 0, result.err
    report = read_report(out)
    m = report["metrics"]
    assert m["robustness.eps_0p3.robust_accuracy"] == m["robustness.autoattack.eps_0p3.robust_accuracy"]
    section = next(s for s in report["sections"] if s["name"] == "robustness")
    assert section["headline"][0] == "robustness.eps_0p3.robust_accuracy"
    assert section["data"]["autoattack"]["autoattack"]["square_queries"] == 20
    assert undeclared_metrics(m) == []
    # Without AutoAttack the section says PGD may overstate robustness.
    out = tmp_path / "pgd"
    args = ["--robustness", "--attack", "pgd", "--eps", "0.3", "--robustness-samples", "20"]
    assert cli("evaluate", "--model", tmp_path / "aa" / "model.pt", *args, "--out", out, "-q").code == 0
    assert (
        PGD_ONLY_LINE in next(s for s in read_report(out)["sections"] if s["name"] == "robustness")["summary"]
    )


def test_apgd_t_by_name_on_a_binary_table_is_refused_before_training(tmp_path, cli):
    result = cli(
        "train", "--epochs", "1", "--robustness", "--attack", "apgd-dlr", "--out", tmp_path / "x", "-q"
    )
    assert result.code == 2 and "needs at least 4 classes" in result.err
    assert not (tmp_path / "x").exists()
    config = RunConfig(options={"robustness": "eval", "attack": "autoattack", "square_queries": 0})
    with pytest.raises(AuditError, match="--square-queries must be at least 1"):
        audit_configure(config)
