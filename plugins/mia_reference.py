"""Reference-model membership inference: offline RMIA (Zarifzadeh et al., ICML 2024).

K reference models are trained by the core's plain recipe (``train_variant``: the run's model, optimizer,
epochs and early stopping, no plugin) on rows that are neither the target's training rows nor the audited
rows: every audited row is "out" for every reference model, which is what the offline attack assumes. Each
audited row is then scored by how much more probable its label is under the target than under the
reference models, which removes what makes a row easy or hard for any model of this recipe.

Members are training rows of the target; non-members are test rows. The reference models train on the test
rows the audit did not draw; when those are too few, half of the drawn non-members are set aside for them
(and are then not scored), as the class-calibrated attack does with its calibration half.

Offline LiRA (Carlini et al. 2022) was tried and left out: on Adult with a DP-SGD target at epsilon 1 to 8 its
AUC was 0.41 to 0.42, below chance, and its two-sided epsilon bound came out positive (0.46 at epsilon 2) from
how confident the non-private reference models are on each row, not from membership: a false alarm waiting to
happen at small epsilon. RMIA's ratio stayed at 0.50 there.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from audit.config import RunConfig
from audit.data import Dataset, Split
from audit.engine import predict_logits
from audit.training import forked_random_state, train_variant
from audit_plugins.membership_inference import AttackResult, run_attack

REFERENCE_MODELS = 8
MAX_REFERENCE_MODELS = 256
# RMIA's offline scaling: Pr(x) ~ ((1 + a) * mean reference probability + (1 - a)) / 2 approximates the
# average over models that did and did not train on x when only "out" models exist (their Section 4).
RMIA_OFFLINE_A = 0.3
# Each reference model trains on at most this many rows: it mimics the target's recipe, and beyond this its
# scores rank rows alike while its cost would grow with the table (8 models x 3M rows each at 10M rows).
MAX_ROWS_PER_MODEL = 100_000
MIN_POOL_ROWS = 20  # fewer spare test rows than this: half of the audited non-members train the references
REFERENCE_SEED_OFFSET = 611953  # a prime: the reference models' seeds are a stream of their own
RMIA_NAME = "reference models (RMIA, offline)"
ATTACKS = (RMIA_NAME,)


@dataclass
class ReferencePlan:
    """Which rows the reference models train on and which non-members stay audited (test-row indices)."""

    pool: np.ndarray
    nonmembers: np.ndarray


@dataclass
class ReferenceScores:
    """RMIA's scores (higher = member) for the audited rows, and what the reference models cost."""

    rmia_members: np.ndarray
    rmia_nonmembers: np.ndarray
    models: int
    rows_per_model: int
    pool_rows: int
    seconds: float


def plan_reference_rows(test_rows: int, nonmembers: np.ndarray, seed: int) -> ReferencePlan:
    """The test rows the audit did not draw train the references; if too few, half the drawn non-members do."""
    spare = np.setdiff1d(np.arange(test_rows), nonmembers)
    if len(spare) >= MIN_POOL_ROWS:
        return ReferencePlan(pool=spare, nonmembers=nonmembers)
    shuffled = np.random.default_rng(seed).permutation(nonmembers)
    half = len(shuffled) // 2
    return ReferencePlan(pool=np.sort(np.r_[spare, shuffled[:half]]), nonmembers=np.sort(shuffled[half:]))


def train_reference_models(
    config: RunConfig,
    dataset: Dataset,
    pool: np.ndarray,
    *,
    models: int,
    rows_per_model: int,
    device: torch.device,
) -> list[torch.nn.Module]:
    """K models by the core's plain recipe, each on a random ``rows_per_model`` of the pool's test rows."""
    trained = []
    test = dataset.test
    for i in range(models):
        seed = config.seed + REFERENCE_SEED_OFFSET + i
        rows = torch.from_numpy(np.random.default_rng(seed).choice(pool, rows_per_model, replace=False))
        split = Split(test.x[rows], test.y[rows], test.groups.iloc[:0])
        reference_config = dataclasses.replace(config, seed=seed, quiet=True, sources=dict(config.sources))
        data = dataclasses.replace(dataset, train=split, val=_capped(dataset.val, seed))
        model, _ = train_variant(reference_config, data, device=device)
        trained.append(model)
    return trained


def _capped(split: Split, seed: int) -> Split:
    """The split itself, or a seeded ``MAX_ROWS_PER_MODEL`` of its rows (a reference's early stopping on a large
    table need not score every validation row each epoch)."""
    if len(split) <= MAX_ROWS_PER_MODEL:
        return split
    rows = torch.from_numpy(
        np.sort(np.random.default_rng(seed).choice(len(split), MAX_ROWS_PER_MODEL, replace=False))
    )
    return Split(split.x[rows], split.y[rows], split.groups.iloc[:0])


def true_class_log_probs(
    model: torch.nn.Module, split: Split, rows: np.ndarray, device: torch.device
) -> np.ndarray:
    """log p(y | x) from the logits (a memorised row's cross-entropy rounds to 0 in float32, its logits do not)."""
    index = torch.from_numpy(rows)
    logits = predict_logits(model, split.x[index], device).double()
    true = logits.gather(1, split.y[index].long().unsqueeze(1)).squeeze(1)
    return (true - logits.logsumexp(1)).numpy()


def rmia_scores(
    target_log_p: np.ndarray, reference_log_p: np.ndarray, *, a: float = RMIA_OFFLINE_A
) -> np.ndarray:
    """Offline RMIA's likelihood ratio p(x | target) / Pr(x), in logs.

    RMIA compares this ratio with the same ratio on population rows z and counts the z it beats by a factor
    gamma; with gamma = 1 that count is an increasing function of the ratio, so ranking rows by the ratio
    gives the same ROC curve (AUC, TPR at any FPR).
    """
    mean_out = np.exp(reference_log_p).mean(axis=0)
    return target_log_p - np.log(((1 + a) * mean_out + (1 - a)) / 2)


def reference_scores(
    *,
    config: RunConfig,
    dataset: Dataset,
    target: torch.nn.Module,
    members: np.ndarray,
    plan: ReferencePlan,
    models: int,
    device: torch.device,
    cache: dict[Any, list[torch.nn.Module]] | None = None,
) -> ReferenceScores:
    """Train the reference models on the plan's pool and score the audited members and non-members.

    The references depend on the data, the pool and the seed, never on the audited model: with a ``cache`` (the
    run's ``ctx.artifacts``), a second audited model of the same run (a compressed one) reuses them.
    """
    started = time.perf_counter()
    rows_per_model = int(min(len(dataset.train), len(plan.pool), MAX_ROWS_PER_MODEL))
    key = (models, rows_per_model, config.seed, plan.pool.tobytes())
    refs = (cache or {}).get(key)
    if refs is None:
        refs = train_reference_models(
            config, dataset, plan.pool, models=models, rows_per_model=rows_per_model, device=device
        )
        if cache is not None:
            cache[key] = refs
    refs = [m.to(device) for m in refs]  # a compressed model may be audited on another device
    sides = []
    for split, rows in ((dataset.train, members), (dataset.test, plan.nonmembers)):
        reference_log_p = np.stack([true_class_log_probs(m, split, rows, device) for m in refs])
        sides.append(rmia_scores(true_class_log_probs(target, split, rows, device), reference_log_p))
    rmia_in, rmia_out = sides
    return ReferenceScores(
        rmia_members=rmia_in,
        rmia_nonmembers=rmia_out,
        models=models,
        rows_per_model=rows_per_model,
        pool_rows=len(plan.pool),
        seconds=time.perf_counter() - started,
    )


def reference_attacks(
    *,
    config: RunConfig,
    dataset: Dataset,
    target: torch.nn.Module,
    members: np.ndarray,
    nonmembers: np.ndarray,
    models: int,
    device: torch.device,
    delta: float,
    seed: int,
    confidence: float,
    cache: dict[Any, list[torch.nn.Module]] | None = None,
) -> tuple[list[AttackResult], dict[str, Any]]:
    """Offline RMIA on the audited rows, and what they cost (JSON-able).

    The reference models' training reseeds the global random streams; they are forked so that the sections
    computed after this one draw what they would have drawn without it.
    """
    plan = plan_reference_rows(len(dataset.test), nonmembers, seed)
    with forked_random_state():
        scores = reference_scores(
            config=config,
            dataset=dataset,
            target=target,
            members=members,
            plan=plan,
            models=models,
            device=device,
            cache=cache,
        )
    attacks = [
        run_attack(
            RMIA_NAME,
            scores.rmia_members,
            scores.rmia_nonmembers,
            delta=delta,
            seed=seed,
            confidence=confidence,
        ),
    ]
    cost = {
        "models": scores.models,
        "rows_per_model": scores.rows_per_model,
        "pool_rows": scores.pool_rows,
        "max_rows_per_model": MAX_ROWS_PER_MODEL,
        "audited_nonmembers": len(plan.nonmembers),
        "seconds": scores.seconds,
    }
    return attacks, cost
