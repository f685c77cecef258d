"""Adult's accuracy / demographic-parity frontier: reweighing at several strengths against group-specific thresholds.

Group-specific thresholds on an unmitigated model's scores are the accuracy-optimal way to reach a parity gap for
those scores (Corbett-Davies et al. 2017), so they show what any reweighing of the same model class could reach.
The thresholds are chosen on the validation rows (largest validation accuracy with a gap at most the target) and
scored once on the test rows, as ``audit tune`` does. Each run prints test accuracy, the parity gap and, for the
trained models, the gap's exact 95% upper bound that a policy gates on.
"""

import argparse

import numpy as np
import torch
from _common import device_line

from audit import api
from audit.config import RunConfig
from audit.data import load_dataset
from audit.groups import group_labels

PARITY = "fairness.sex.demographic_parity_difference"
# audit tune's chosen trial on Adult (2026-11-23 study, default space, seed 0)
SETTINGS = dict(
    lr=0.0014764234187263506,
    batch_size=128,
    hidden=[512, 256, 128],
    weight_decay=1.2597522581331491e-05,
    optimizer="adam",
    patience=6,
    dropout=0.2,
)


def train(seed: int, val_fraction: float, strength: float | None) -> tuple[torch.nn.Module, dict[str, float]]:
    """Train and audit on Adult (reweighing at ``strength``, none when None); the model and its test metrics."""
    options = {"mia_reference_models": 0}
    if strength is not None:
        options |= {"fairness": "reweight", "reweight_strength": strength}
    model, report = api.train(
        data="adult", sensitive=["sex"], options=options, seed=seed, val_fraction=val_fraction, **SETTINGS
    )
    return model, report.metrics


def decisions(scores: np.ndarray, female: np.ndarray, t_female: float, t_male: float) -> np.ndarray:
    """1 where the score clears the row's group threshold."""
    return np.where(female, scores >= t_female, scores >= t_male)


def score(d: np.ndarray, y: np.ndarray, female: np.ndarray) -> tuple[float, float]:
    """(accuracy, demographic-parity gap) of 0/1 decisions."""
    return float((d == y).mean()), float(abs(d[female].mean() - d[~female].mean()))


def threshold_frontier(
    model: torch.nn.Module, seed: int, val_fraction: float, gaps: list[float]
) -> list[str]:
    """For each target gap: thresholds chosen on validation, test accuracy and gap."""
    data = load_dataset(RunConfig(sensitive=["sex"], seed=seed, val_fraction=val_fraction, quiet=True))
    model = model.cpu().eval()
    splits = {}
    for name, split in (("val", data.val), ("test", data.test)):
        with torch.no_grad():
            p = torch.softmax(model(split.x), 1)[:, data.positive_index].numpy()
        female = group_labels(split.groups, ["sex"]) == "Female"
        splits[name] = (p, (split.y.numpy() == data.positive_index).astype(int), female)
    grid = np.linspace(0.05, 0.95, 91)
    lines = []
    for gap in gaps:
        p, y, female = splits["val"]
        best = max(
            (acc, a, b)
            for a in grid
            for b in grid
            for acc, g in [score(decisions(p, female, a, b), y, female)]
            if g <= gap
        )
        p, y, female = splits["test"]
        acc, g = score(decisions(p, female, best[1], best[2]), y, female)
        lines.append(f"  thresholds, val gap <= {gap:.2f}: test accuracy {acc:.4f}, gap {g:.4f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--val-fraction", type=float, default=0.3)
    parser.add_argument("--strengths", default="1,0.9,0.8")
    parser.add_argument("--gaps", default="0.10,0.08,0.07,0.06")
    args = parser.parse_args()
    print(device_line())
    gaps = [float(g) for g in args.gaps.split(",")]
    for seed in (int(s) for s in args.seeds.split(",")):
        print(f"seed {seed}, validation share {args.val_fraction}:")
        for strength in [None, *(float(s) for s in args.strengths.split(","))]:
            model, m = train(seed, args.val_fraction, strength)
            what = "no mitigation" if strength is None else f"reweighing at strength {strength:g}"
            print(
                f"  {what}: test accuracy {m['performance.accuracy']:.4f}, gap {m[PARITY]:.4f} "
                f"(upper bound {m[PARITY + '.ci_high']:.4f})"
            )
            if strength is None:
                print("\n".join(threshold_frontier(model, seed, args.val_fraction, gaps)))


if __name__ == "__main__":
    main()
