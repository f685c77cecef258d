"""Privacy plugin: DP-SGD through Opacus on tensor batches, honest accounting, and a membership-inference audit."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from audit import AuditError, hookimpl
from audit.config import CliOption, RunConfig
from audit.distributed import all_reduce_sum_
from audit.engine import DataUse, EpochState, PoissonBatches, TrainingSetup
from audit.evaluation import EvalContext
from audit.groups import group_labels, group_masks, group_metric, sensitive_features
from audit.models import replace_batchnorm
from audit.report import Figure, MetricSpec, Section, Series, Table
from audit.training import make_optimizer
from audit_plugins import accounting, dp_audit, dp_canaries, dp_clipping, mia_reference
from audit_plugins.membership_inference import (
    ATTACKS,
    CONFIDENCE,
    MIN_SAMPLES,
    draw_sides,
    group_aucs,
    loss_attacks,
    per_attack_confidence,
)

TAGS = ("NIST AI RMF MEASURE 2.10", "EU AI Act Art. 10(5)")
MIA_SAMPLES = 5000
# Noisy clipped gradients are smaller than plain ones; 3e-3 with Adam reached 0.851 on Adult at epsilon 1 (1e-3: 0.838).
DP_DEFAULT_LR = 3e-3
# Seed offsets (primes) so the noise and the audit's row draws are streams of their own, not the training seed's.
NOISE_SEED_OFFSET = 104729
MIA_SEED_OFFSET = 15485863
# Options that mean nothing without --dp, and the defaults they take with it.
DP_ONLY_FLAGS = {
    "--epsilon": "epsilon",
    "--noise-multiplier": "noise_multiplier",
    "--delta": "delta",
    "--max-grad-norm": "max_grad_norm",
    "--accountant": "accountant",
    "--dp-baseline": "dp_baseline",
    "--dp-audit": "dp_audit",
}
DP_AUDIT_CANARIES = 1000  # per threat model; at least MIN_CANARIES (the smallest guess count, 5 per side)
MIN_CANARIES = 10
DP_DEFAULTS = {"max_grad_norm": 1.0, "accountant": accounting.DEFAULT_ACCOUNTANT}
# Table headings -> payload keys.
ATTACK_COLUMNS = {
    "attack": "name",
    "AUC": "auc",
    "TPR @ FPR 1%": "tpr_at_fpr_0.01",
    "TPR @ FPR 0.1%": "tpr_at_fpr_0.001",
    "epsilon lower bound": "epsilon_lower_bound",
    "level": "confidence",
    "members": "members",
    "non-members": "nonmembers",
}
GROUP_COLUMNS = {
    "feature": "feature",
    "group": "group",
    "members": "members",
    "non-members": "nonmembers",
    "AUC": "auc",
}
# ctx.artifacts key of the trained RMIA reference models: every model a run audits (a compressed one too) reuses them
REFERENCE_CACHE = "privacy.mia_reference_models"
ONE_PASS_METHOD = (
    "per-sample gradient norms and clipped sums from one backward pass (book-keeping ghost clipping: "
    "Linear, Conv2d, GroupNorm and LayerNorm layers), noise by Opacus' DPOptimizerFastGradientClipping"
)
OPACUS_METHOD = "per-sample gradients by Opacus' GradSampleModule, clipping and noise by DPOptimizer"


@dataclass
class EpochPrivacy:
    """Privacy spent and share of per-sample gradients clipped, at the end of one epoch."""

    epoch: int
    epsilon: float
    clip_rate: float


@dataclass
class PrivacyState:
    """What DP-SGD keeps between hooks, in ``setup.artifacts["privacy"]`` (``ctx.artifacts`` after training)."""

    # an accountant with Opacus' interface (audit_plugins.accounting); its history holds the steps taken
    accountant: Any
    accountant_name: str
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    planned_steps: int
    target_epsilon: float | None
    clip_counts: torch.Tensor  # [clipped, total] on the device: read once per epoch, not once per step
    data_uses: list[DataUse]  # the setup's own list: plugins that read training data outside the optimizer
    clipper: dp_clipping.BookKeepingClipper | None = None  # the one-pass path's hooks, until training ends
    epochs: list[EpochPrivacy] = field(default_factory=list)

    def steps(self) -> int:
        """DP-SGD steps taken so far."""
        return int(sum(steps for _, _, steps in self.accountant.history))

    def epsilon(self) -> float:
        """Epsilon spent over the steps taken (0 before the first)."""
        return float(self.accountant.get_epsilon(delta=self.delta)) if self.steps() else 0.0

    def guarantee(self) -> dict[str, Any]:
        """The (epsilon, delta) guarantee and how it was reached, JSON-able (it travels in model.pt)."""
        return {
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "noise_multiplier": float(self.noise_multiplier),
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "steps": self.steps(),
            "planned_steps": self.planned_steps,
            "accountant": self.accountant_name,
            # the same noise and steps under RDP, the loosest accountant and the former default: for comparison
            "epsilon_rdp": accounting.epsilon_under("rdp", self.accountant.history, delta=self.delta),
            "target_epsilon": self.target_epsilon,
        }


def _train_option(flag: str, help_text: str, **kwargs: Any) -> CliOption:
    return CliOption((flag,), dict(help=help_text, **kwargs), commands=("train",))


@hookimpl
def audit_cli_options() -> list[CliOption]:
    """The DP-SGD options (train only) and the membership-inference sample size (train and evaluate)."""
    return [
        _train_option("--dp", "train with DP-SGD (Opacus)", action="store_true", default=False),
        _train_option(
            "--epsilon", "privacy budget for the whole run; calibrates the noise", type=float, default=None
        ),
        _train_option(
            "--noise-multiplier", "DP-SGD noise multiplier (instead of --epsilon)", type=float, default=None
        ),
        _train_option("--max-grad-norm", "per-sample gradient clipping norm [1.0]", type=float, default=None),
        _train_option("--delta", "delta [the power of ten below 1/N]", type=float, default=None),
        _train_option(
            "--accountant",
            f"privacy accountant: pld (dp-accounting), prv or rdp (Opacus) [{accounting.DEFAULT_ACCOUNTANT}]",
            choices=list(accounting.ACCOUNTANTS),
            default=None,
        ),
        _train_option(
            "--dp-baseline", "also train without DP and compare accuracy", action="store_true", default=False
        ),
        _train_option(
            "--dp-audit",
            "audit DP-SGD with canaries in one extra training run (Steinke et al. 2023)",
            action="store_true",
            default=False,
        ),
        _train_option(
            "--dp-audit-canaries", f"canaries per threat model [{DP_AUDIT_CANARIES}]", type=int, default=None
        ),
        CliOption(
            ("--mia-reference-models",),
            dict(
                type=int,
                default=None,
                help=f"reference models for the RMIA attack [{mia_reference.REFERENCE_MODELS} on tables, "
                "0 on images; 0: off]",
            ),
        ),
        CliOption(
            ("--mia-samples",),
            dict(
                type=int,
                default=MIA_SAMPLES,
                help=f"rows per side for the membership-inference audit [{MIA_SAMPLES}]",
            ),
        ),
    ]


@hookimpl
def audit_configure(config: RunConfig) -> None:
    """Check the privacy options: DP-only options need --dp, and DP-SGD refuses what would void its guarantee."""
    if config.option("mia_samples", MIA_SAMPLES) < MIN_SAMPLES:
        raise AuditError(f"--mia-samples must be at least {MIN_SAMPLES}, got {config.option('mia_samples')}")
    _check_audit_options(config)
    if not config.option("dp", False):
        config.refuse_without("--dp", DP_ONLY_FLAGS)
        return
    config.default_options(DP_DEFAULTS)
    epsilon, sigma = config.option("epsilon"), config.option("noise_multiplier")
    if (epsilon is None) == (sigma is None):
        raise AuditError(
            "--dp needs exactly one of --epsilon E (calibrate the noise) or --noise-multiplier S"
        )
    # "not (0 < x < inf)" also refuses NaN; an infinite epsilon or noise multiplier is no guarantee at all
    for flag, value in (
        ("--epsilon", epsilon),
        ("--noise-multiplier", sigma),
        ("--max-grad-norm", config.option("max_grad_norm")),
    ):
        if value is not None and not (0 < value < math.inf):
            raise AuditError(f"{flag} must be a finite positive number, got {value}")
    delta = config.option("delta")
    if delta is not None and not (0 < delta < 1):
        raise AuditError(f"--delta must be in (0, 1) and below 1/N, got {delta}")
    if config.compile:
        raise AuditError(
            "--compile cannot be combined with --dp: Opacus' per-sample gradient hooks need the eager model"
        )
    if config.grad_clip is not None:
        raise AuditError(
            "--grad-clip cannot be combined with --dp: DP-SGD clips each sample's gradient; use --max-grad-norm"
        )


def _check_audit_options(config: RunConfig) -> None:
    """Reference-model count and canary count: in range, and the canaries only with --dp-audit."""
    models = config.option("mia_reference_models")
    if models is not None and not 0 <= models <= mia_reference.MAX_REFERENCE_MODELS:
        raise AuditError(
            f"--mia-reference-models must be between 0 and {mia_reference.MAX_REFERENCE_MODELS}, got {models}"
        )
    canaries = config.option("dp_audit_canaries")
    if canaries is not None and not config.option("dp_audit", False):
        raise AuditError("--dp-audit-canaries only applies with --dp-audit")
    if canaries is not None and canaries < MIN_CANARIES:
        raise AuditError(f"--dp-audit-canaries must be at least {MIN_CANARIES}, got {canaries}")


@hookimpl
def audit_config_defaults(config: RunConfig) -> dict[str, Any] | None:
    """DP-SGD's learning rate under --dp (a --lr the user gives still wins); nothing otherwise."""
    return {"lr": DP_DEFAULT_LR} if config.option("dp", False) else None


def default_delta(num_rows: int) -> float:
    """The largest power of ten strictly below 1/N."""
    exponent = math.floor(math.log10(1.0 / num_rows))
    delta = 10.0**exponent
    return delta / 10 if delta >= 1.0 / num_rows else delta


def _checked_delta(delta: float | None, num_rows: int) -> float:
    delta = default_delta(num_rows) if delta is None else delta
    if delta >= 1.0 / num_rows:
        raise AuditError(
            f"--delta {delta:g} is not below 1/N = {1.0 / num_rows:.3g} for {num_rows} training rows; a delta "
            "that large allows releasing a whole row"
        )
    return delta


def _noise_multiplier(config: RunConfig, delta: float, sample_rate: float, steps: int) -> float:
    if config.option("noise_multiplier") is not None:
        return config.option("noise_multiplier")
    # Calibrated for the planned steps, so stopping early can only spend less than --epsilon.
    try:
        return accounting.calibrate_noise(
            config.option("accountant"),
            target_epsilon=config.option("epsilon"),
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
        )
    except ValueError as exc:  # Opacus: "The privacy budget is too low." (no finite noise reaches it)
        raise AuditError(
            f"--epsilon {config.option('epsilon'):g} cannot be reached with any noise over {steps} steps at sample "
            f"rate {sample_rate:.3g} and delta {delta:g} ({exc}); raise --epsilon or train fewer steps"
        ) from None


def _replace_unsupported_layers(setup: TrainingSetup) -> None:
    """Swap BatchNorm for per-sample normalisation (it mixes rows, so one row's influence is unbounded)."""
    from opacus.validators import ModuleValidator

    if not ModuleValidator.validate(setup.base_model, strict=False):
        return
    fixed, count = replace_batchnorm(setup.base_model)
    remaining = ModuleValidator.validate(fixed, strict=False)
    if remaining:
        raise AuditError(f"the model has layers DP-SGD cannot train: {remaining[0]}")
    setup.base_model = setup.model = fixed.to(setup.device)
    setup.model_spec = {**setup.model_spec, "batchnorm_replaced": True}
    setup.optimizer = make_optimizer(setup.config, [p for p in fixed.parameters() if p.requires_grad])
    setup.notes.append(
        f"DP: replaced {count} BatchNorm layer(s) with per-sample normalisation "
        "(BatchNorm1d -> LayerNorm, 2d/3d -> GroupNorm)"
    )


def _grad_sample_norms(optimizer: Any) -> torch.Tensor:
    # DPOptimizer does not keep its per-sample norms; this recomputation only runs off the one-pass path.
    return torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in optimizer.grad_samples], dim=1).norm(
        2, dim=1
    )


def _step_hook(state: PrivacyState) -> Callable[[Any], None]:
    """The optimizer's step hook: account the step and count the per-sample gradients that were clipped."""
    account = state.accountant.get_optimizer_hook_fn(sample_rate=state.sample_rate)
    clipper = state.clipper

    def hook(optimizer: Any) -> None:
        account(optimizer)
        norms = clipper.last_norms if clipper is not None else _grad_sample_norms(optimizer)
        state.clip_counts[0] += (norms > state.max_grad_norm).sum()
        state.clip_counts[1] += len(norms)

    return hook


def _privatise(setup: TrainingSetup, state: PrivacyState) -> str:
    """Put per-sample clipping and noise on the setup's model and optimizer; return how, for the notes."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    dp_kwargs = dict(
        noise_multiplier=state.noise_multiplier,
        max_grad_norm=state.max_grad_norm,
        expected_batch_size=setup.config.batch_size,
        loss_reduction="mean",
        generator=torch.Generator(device=setup.device).manual_seed(setup.config.seed + NOISE_SEED_OFFSET),
    )
    if dp_clipping.supports(setup.model, setup.dataset.train.x[:2].to(setup.device)):
        state.clipper = dp_clipping.BookKeepingClipper(setup.model, max_grad_norm=state.max_grad_norm)
        setup.optimizer = dp_clipping.make_noise_optimizer(setup.optimizer, **dp_kwargs)
        setup.backward = state.clipper.backward
        method = ONE_PASS_METHOD
    else:
        setup.model = GradSampleModule(setup.model, batch_first=True, loss_reduction="mean")
        setup.optimizer = DPOptimizer(setup.optimizer, **dp_kwargs)
        method = OPACUS_METHOD
    setup.optimizer.attach_step_hook(_step_hook(state))
    if setup.world is not None:
        _sum_over_ranks(setup.optimizer)
        setup.syncs_gradients = True  # no DDP: its averaging would run before the clipping
        method += (
            f"; {setup.world.world_size} processes: each clips its shard's rows, the clipped sums are "
            "all-reduced, then the noise is added once (the same seeded draw on every rank)"
        )
    return method


def _sum_over_ranks(optimizer: Any) -> None:
    """Make the optimizer noise the clipped sum of the GLOBAL batch: all-reduce each rank's sum before the noise.

    Every rank then adds the same seeded noise N(0, sigma^2 C^2) and divides by the global expected batch, so the
    averaged gradient carries noise of std sigma C / (q N) once, as on one process (Opacus' DistributedDPOptimizer
    reaches the same total by noising on rank 0 and averaging after; here the ranks never need a second
    all-reduce and their weights stay identical)."""
    add_noise = optimizer.add_noise

    def add_noise_to_global_sum() -> None:
        all_reduce_sum_([p.summed_grad for p in optimizer.params])
        add_noise()

    optimizer.add_noise = add_noise_to_global_sum


@hookimpl(trylast=True)
def audit_prepare_training(setup: TrainingSetup) -> None:
    """Wrap last: DP-SGD must see the final model, optimizer and sampler."""
    config = setup.config
    if not config.option("dp", False):
        return
    if setup.batch_transform is not None:
        raise AuditError(
            "--dp cannot be combined with a plugin that rewrites training batches (such as --robustness "
            "adv-train): the attack's extra backward passes would pass through the per-sample gradient hooks"
        )
    num_rows = len(setup.dataset.train)
    delta = _checked_delta(config.option("delta"), num_rows)
    _replace_unsupported_layers(setup)
    sampler = PoissonBatches(num_rows=num_rows, sample_rate=min(1.0, config.batch_size / num_rows))
    planned_steps = config.epochs * sampler.steps_per_epoch
    state = PrivacyState(
        accountant=accounting.make_accountant(config.option("accountant")),
        accountant_name=config.option("accountant"),
        delta=delta,
        noise_multiplier=_noise_multiplier(config, delta, sampler.sample_rate, planned_steps),
        max_grad_norm=config.option("max_grad_norm"),
        sample_rate=sampler.sample_rate,
        planned_steps=planned_steps,
        target_epsilon=config.option("epsilon"),
        clip_counts=torch.zeros(2, device=setup.device),
        data_uses=setup.data_uses,
    )
    method = _privatise(setup, state)
    setup.batch_sampler = sampler
    setup.use_amp = False
    setup.track_grad_norm = False  # the non-private gradient norm must not leak into the report
    setup.monitor = "val_accuracy"  # DP noise inflates the validation loss while accuracy still improves
    setup.notes.append(
        f"DP: Poisson sampling on tensor indices; {method}; mixed precision off; the kept epoch is chosen on "
        f"validation accuracy (DP noise makes the validation loss misleading); lr {config.lr:g}"
    )
    setup.artifacts["privacy"] = state


@hookimpl
def audit_after_epoch(state: EpochState) -> dict[str, float] | None:
    """Epsilon spent so far and the epoch's share of clipped per-sample gradients (training history columns)."""
    privacy: PrivacyState | None = state.setup.artifacts.get("privacy")
    if privacy is None:
        return None
    if state.setup.world is not None:  # the global batch's share clipped
        all_reduce_sum_([privacy.clip_counts])
    clipped, total = privacy.clip_counts.tolist()
    privacy.clip_counts.zero_()
    epoch = EpochPrivacy(state.epoch, privacy.epsilon(), clipped / total if total else math.nan)
    privacy.epochs.append(epoch)
    return {"privacy_epsilon": epoch.epsilon, "privacy_clip_rate": epoch.clip_rate}


@hookimpl
def audit_after_training(setup: TrainingSetup) -> None:
    """Detach the per-sample hooks so later passes (attacks, audits) see the plain model."""
    state: PrivacyState | None = setup.artifacts.get("privacy")
    if state is None:
        return
    if hasattr(setup.model, "_close"):  # Opacus' GradSampleModule
        setup.model._close()
        setup.model = setup.base_model
    if state.clipper is not None:
        state.clipper.remove()
        state.clipper = None
        setup.backward = None


@hookimpl
def audit_checkpoint_metadata(setup: TrainingSetup) -> dict[str, Any] | None:
    """The DP guarantee, so that 'audit evaluate' on the saved model reports it again."""
    state: PrivacyState | None = setup.artifacts.get("privacy")
    return {"privacy": state.guarantee()} if state else None


# --- the section: payload first, then metrics, tables, figures and summary rendered from it --------------


@hookimpl
def audit_evaluate(ctx: EvalContext) -> Section | None:
    """The privacy section: the DP guarantee (if any), the membership-inference audit, the utility cost."""
    section = Section("privacy", "Privacy", order=30)
    section.data = privacy_payload(ctx)
    _render_guarantee(section)
    _render_data_uses(section)
    _render_training(section)
    _render_membership(section)
    _render_dp_audit(section)
    _render_baseline(section)
    section.summary = summary_lines(section.data)
    return section


def privacy_payload(ctx: EvalContext) -> dict[str, Any]:
    """The section's JSON-able payload, from this run's training state or the saved model's metadata."""
    state: PrivacyState | None = ctx.artifacts.get("privacy")
    guarantee = state.guarantee() if state else ctx.checkpoint_metadata.get("privacy")
    delta = guarantee["delta"] if guarantee else default_delta(max(len(ctx.dataset.train), 10))
    uses = [asdict(use) for use in state.data_uses] if state else []
    baseline = ctx.config.option("dp_baseline") and ctx.training is not None
    return {
        "guarantee": guarantee,
        "epochs": [asdict(epoch) for epoch in state.epochs] if state else [],
        "data_uses": uses,
        "epsilon_total": _composed_epsilon(guarantee, uses),
        "membership_inference": membership_payload(ctx, delta),
        "dp_baseline": baseline_payload(ctx) if baseline else None,
        "dp_audit": dp_audit_payload(ctx, state),
        # a model trained elsewhere: whether DP was used is unknown, which is not "no DP"
        "guarantee_known": guarantee is not None or ctx.training_known,
    }


def _composed_epsilon(guarantee: dict[str, Any] | None, uses: list[dict[str, Any]]) -> float | None:
    """DP-SGD's epsilon plus each data use's, by basic composition; None unless every use was privatised."""
    if not guarantee or not uses or any(use["epsilon"] is None for use in uses):
        return None
    total = guarantee["epsilon"]
    for use in uses:
        total += use["epsilon"]
    return total


def membership_payload(ctx: EvalContext, delta: float) -> dict[str, Any]:
    """Loss-based attacks on training rows (members) against test rows (non-members), overall and per group."""
    train_losses, held_losses = ctx.train_losses.numpy(), ctx.heldout_losses.numpy()
    payload: dict[str, Any] = dict(
        delta=delta,
        skipped=None,
        attacks=[],
        headline_attack=None,
        epsilon_lower_bound=None,
        # the bound on the maximum over the attacks holds at `confidence`: each attack's at the Bonferroni share
        confidence=CONFIDENCE,
        per_attack_confidence=per_attack_confidence(CONFIDENCE, len(ATTACKS)),
        attack_count=0,
        groups=[],
        reference_models=None,
    )
    if len(train_losses) == 0:
        return {**payload, "skipped": "the training rows are not known for this evaluation"}
    samples = ctx.config.option("mia_samples", MIA_SAMPLES)
    members, nonmembers = draw_sides(len(train_losses), len(held_losses), samples, ctx.seed + MIA_SEED_OFFSET)
    if len(members) < MIN_SAMPLES:
        return {**payload, "skipped": f"{len(members)} rows per side, fewer than the {MIN_SAMPLES} it needs"}
    y_train, y_test = ctx.dataset.train.y.numpy()[members], ctx.test_y.numpy()[nonmembers]
    models = reference_model_count(ctx)
    level = per_attack_confidence(CONFIDENCE, len(ATTACKS) + (len(mia_reference.ATTACKS) if models else 0))
    attacks = loss_attacks(
        train_losses[members],
        y_train,
        held_losses[nonmembers],
        y_test,
        delta=delta,
        seed=ctx.seed,
        confidence=level,
    )
    reference = None
    if models:  # offline RMIA: K reference models trained on rows that are never audited
        more, reference = _reference_attacks(
            ctx, members, nonmembers, models=models, delta=delta, level=level
        )
        attacks += more
    groups = []
    for feature, columns in sensitive_features(ctx.dataset.sensitive):
        # label only the audited rows (a few thousand), not every training row of a large table
        member_groups = group_labels(ctx.dataset.train.groups.iloc[members], columns)
        nonmember_groups = group_labels(ctx.dataset.test.groups.iloc[nonmembers], columns)
        rows = group_aucs(-train_losses[members], -held_losses[nonmembers], member_groups, nonmember_groups)
        groups += [{"feature": feature, **row} for row in rows]
    return {
        **payload,
        "attacks": [attack.to_dict() for attack in attacks],
        "attack_count": len(attacks),
        "per_attack_confidence": level,
        "reference_models": reference,  # K, rows per model, seconds; None when off
        "headline_attack": max(attacks, key=lambda a: a.auc).name,
        "epsilon_lower_bound": max(a.epsilon_lower_bound for a in attacks),
        "groups": groups,  # the loss-threshold attack within each sensitive group
    }


def _reference_attacks(
    ctx: EvalContext, members: np.ndarray, nonmembers: np.ndarray, *, models: int, delta: float, level: float
) -> tuple[list[Any], dict[str, Any]]:
    return mia_reference.reference_attacks(
        config=ctx.config,
        dataset=ctx.dataset,
        target=ctx.model,
        members=members,
        nonmembers=nonmembers,
        models=models,
        device=ctx.device,
        delta=delta,
        seed=ctx.seed,
        confidence=level,
        cache=ctx.artifacts.setdefault(REFERENCE_CACHE, {}),
    )


def reference_model_count(ctx: EvalContext) -> int:
    """--mia-reference-models, else 8 on tables and 0 on images; 0 for a model trained elsewhere (recipe unknown)."""
    if not ctx.training_known:
        return 0
    models = ctx.config.option("mia_reference_models")
    if models is None:
        return mia_reference.REFERENCE_MODELS if ctx.dataset.kind == "tabular" else 0
    return models


def dp_audit_payload(ctx: EvalContext, state: PrivacyState | None) -> dict[str, Any] | None:
    """The one-run DP-SGD audit (--dp-audit): a separate DP-SGD run with canaries, through this plugin's own path."""
    if not ctx.config.option("dp_audit", False):
        return None
    if state is None or ctx.training is None:
        return {"skipped": "it needs this run's DP-SGD training ('audit train --dp --dp-audit')"}
    return dp_canaries.audit_payload(
        config=ctx.config,
        dataset=ctx.dataset,
        device=ctx.device,
        guarantee=state.guarantee(),
        prepare=audit_prepare_training,
        finish=audit_after_training,
        count=ctx.config.option("dp_audit_canaries") or DP_AUDIT_CANARIES,
        confidence=CONFIDENCE,
    )


def baseline_payload(ctx: EvalContext) -> dict[str, Any]:
    """Test accuracy of the core's model trained without DP against this run's, overall and per group."""
    _, pred = ctx.baseline()
    y = ctx.test_y

    def accuracy(predicted: torch.Tensor, mask: np.ndarray | None = None) -> float:
        hits = (
            predicted == y if mask is None else predicted[torch.as_tensor(mask)] == y[torch.as_tensor(mask)]
        )
        return float(hits.float().mean())

    base_acc, acc = accuracy(pred), accuracy(ctx.test_pred)
    groups = [
        {
            "feature": feature,
            "group": group,
            "rows": int(mask.sum()),
            "baseline_accuracy": accuracy(pred, mask),
            "accuracy": accuracy(ctx.test_pred, mask),
        }
        for feature, columns in sensitive_features(ctx.dataset.sensitive)
        for group, mask in group_masks(group_labels(ctx.dataset.test.groups, columns))
    ]
    return {
        "rows": len(y),
        "baseline_accuracy": base_acc,
        "accuracy": acc,
        "accuracy_cost": base_acc - acc,
        "groups": groups,
    }


UNKNOWN_TRAINING = (
    "differential privacy unknown: the model was trained outside rai-audit, so no guarantee can be stated "
    "(nor its absence)"
)


def _render_guarantee(section: Section) -> None:
    guarantee = section.data["guarantee"]
    if not guarantee:
        section.notes.append(
            "no differential-privacy guarantee: the model was trained without DP-SGD"
            if section.data.get("guarantee_known", True)
            else UNKNOWN_TRAINING
        )
        return
    for key in ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", "steps"):
        section.add_metric(key, guarantee[key])
    name = guarantee["accountant"]
    note = (
        f"(epsilon, delta) = ({guarantee['epsilon']:.4g}, {guarantee['delta']:g}) from "
        f"{accounting.LABELS.get(name, name)} accountant over the {guarantee['steps']} steps actually taken "
        f"(planned {guarantee['planned_steps']})"
    )
    if guarantee.get("epsilon_rdp") is not None:  # older model files lack it
        section.add_metric("epsilon_rdp", guarantee["epsilon_rdp"])
        note += f"; Opacus' RDP accountant gives epsilon {guarantee['epsilon_rdp']:.4g} for the same noise and steps"
    section.notes.append(note)
    section.notes.append(
        "the guarantee covers the training rows; the validation rows chose the kept epoch and are not covered; "
        "noise comes from a seeded PRNG (Opacus secure_mode off), fine for audits, not for production releases"
    )


def _render_data_uses(section: Section) -> None:
    for use in section.data["data_uses"]:
        if use["epsilon"] is None:
            section.warnings.append(
                f"{use['name']} ({use['description']}) used the training rows without noise: that use is "
                "outside the DP-SGD guarantee (pass --reweight-epsilon to privatise it)"
            )
        else:
            section.notes.append(f"{use['name']}: privatised at epsilon {use['epsilon']:g} (Laplace counts)")
    total = section.data["epsilon_total"]
    if total is not None:
        section.add_metric("epsilon_total", total)
        section.notes.append(
            f"total epsilon by basic composition, DP-SGD plus the data uses above: {total:.4g}"
        )


def _render_training(section: Section) -> None:
    epochs = section.data["epochs"]
    if not epochs:  # no DP-SGD training in this run ('audit evaluate', or trained without --dp)
        return
    xs = [e["epoch"] for e in epochs]
    section.figures.append(
        Figure(
            "Privacy spent per epoch",
            "line",
            "epoch",
            "epsilon",
            [Series("epsilon", xs, [e["epsilon"] for e in epochs])],
        )
    )
    section.figures.append(
        Figure(
            "Share of per-sample gradients clipped",
            "line",
            "epoch",
            "fraction clipped",
            [Series("clipped", xs, [e["clip_rate"] for e in epochs])],
        )
    )
    section.add_metric("clip_rate_last_epoch", epochs[-1]["clip_rate"])
    if epochs[-1]["clip_rate"] > 0.95:
        section.warnings.append(
            "over 95% of per-sample gradients were clipped in the last epoch: --max-grad-norm "
            "may be too small, which biases the gradient"
        )


def _table(title: str, columns: dict[str, str], rows: list[dict[str, Any]]) -> Table:
    """A table of payload rows: ``columns`` maps each column's heading to its payload key."""
    return Table(title, list(columns), [[row[key] for key in columns.values()] for row in rows])


def _render_membership(section: Section) -> None:
    mia = section.data["membership_inference"]
    if mia["skipped"]:
        section.notes.append(f"membership-inference audit skipped: {mia['skipped']}")
        return
    best = next(a for a in mia["attacks"] if a["name"] == mia["headline_attack"])
    for key in ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001"):
        section.add_metric(f"mia_{key}", best[key])
    section.add_metric("empirical_epsilon_lower_bound", mia["epsilon_lower_bound"])
    title = "Membership-inference attacks (members: training rows; non-members: test rows)"
    section.tables.append(_table(title, ATTACK_COLUMNS, mia["attacks"]))
    section.notes.append(
        f"headline MIA figures are the strongest attack's ({best['name']}); the epsilon lower bound, the largest "
        f"over the {mia['attack_count']} attacks, holds with {mia['confidence']:.0%} confidence: each attack's "
        f"bound is at {mia['per_attack_confidence']:.1%} (Bonferroni), threshold chosen on half the rows, "
        f"Clopper-Pearson bounds on the other half, delta {mia['delta']:g}"
    )
    _render_membership_groups(section, mia["groups"])


def _render_dp_audit(section: Section) -> None:
    audit = section.data.get("dp_audit")
    if audit is None:
        return
    if audit["skipped"]:
        section.notes.append(f"one-run DP-SGD audit skipped: {audit['skipped']}")
        return
    section.add_metric("audit.epsilon_lower_bound", audit["epsilon_lower_bound"])
    section.add_metric("audit.epsilon_lower_bound.whitebox", audit["whitebox"]["epsilon_lower_bound"])
    section.add_metric("audit.epsilon_lower_bound.blackbox", audit["blackbox"]["epsilon_lower_bound"])
    section.add_metric("audit.canaries", audit["canaries"])
    section.add_metric("audit.confidence", audit["confidence"])
    section.figures.append(dp_audit.bound_figure(audit))
    rows = [
        [
            dp_audit.THREAT_MODELS[k],
            audit[k]["canaries"],
            audit[k]["included"],
            audit[k]["epsilon_lower_bound"],
        ]
        for k in ("whitebox", "blackbox")
    ]
    columns = ["threat model", "canaries", "included (coin = 1)", "epsilon lower bound"]
    section.tables.append(Table("One-run DP-SGD audit (Steinke, Nasr and Jagielski 2023)", columns, rows))
    section.notes.append(dp_audit.method_note(audit))
    if audit["epsilon_lower_bound"] > audit["accountant_epsilon"]:
        section.warnings.append(
            f"the one-run audit proves epsilon >= {audit['epsilon_lower_bound']:.3g}, above the accountant's "
            f"{audit['accountant_epsilon']:.4g}: DP-SGD's clipping, noise or accounting is broken"
        )


def _render_membership_groups(section: Section, groups: list[dict[str, Any]]) -> None:
    for row in groups:
        section.add_metric(group_metric(row["feature"], row["group"], "mia_auc"), row["auc"])
    if groups:
        section.tables.append(_table("Loss-threshold MIA AUC per group", GROUP_COLUMNS, groups))


def _render_baseline(section: Section) -> None:
    baseline = section.data["dp_baseline"]
    if baseline is None:
        return
    section.add_metric("baseline_accuracy", baseline["baseline_accuracy"])
    section.add_metric("accuracy_cost", baseline["accuracy_cost"])
    rows = [["all", baseline["rows"], baseline["baseline_accuracy"], baseline["accuracy"]]]
    rows += [
        [f"{g['feature']}={g['group']}", g["rows"], g["baseline_accuracy"], g["accuracy"]]
        for g in baseline["groups"]
    ]
    section.tables.append(
        Table("Utility cost of privacy (test accuracy)", ["rows", "count", "without DP", "with DP"], rows)
    )


def summary_lines(data: dict[str, Any]) -> list[str]:
    """Plain-language findings for a reader of the model card, from the section's payload."""
    guarantee = data["guarantee"]
    if guarantee:
        lines = [
            f"Trained with DP-SGD: (epsilon, delta) = ({guarantee['epsilon']:.4g}, {guarantee['delta']:g}) over "
            f"{guarantee['steps']} steps, noise multiplier {guarantee['noise_multiplier']:.3g}, clipping norm "
            f"{guarantee['max_grad_norm']:g}, {guarantee['accountant'].upper()} accountant"
            + (
                f" (RDP would state epsilon {guarantee['epsilon_rdp']:.4g})."
                if guarantee.get("epsilon_rdp") is not None and guarantee["accountant"] != "rdp"
                else "."
            )
        ]
    elif not data.get("guarantee_known", True):
        lines = [UNKNOWN_TRAINING[:1].upper() + UNKNOWN_TRAINING[1:] + "."]
    else:
        lines = ["Trained without differential privacy: no formal guarantee."]
    lines += [
        f"{use['name'][:1].upper()}{use['name'][1:]} read the training rows without noise: outside the guarantee."
        for use in data["data_uses"]
        if use["epsilon"] is None
    ]
    if data["epsilon_total"] is not None:
        lines.append(
            f"Total epsilon with the privatised data uses (basic composition): {data['epsilon_total']:.4g}."
        )
    lines.append(_membership_line(data["membership_inference"], guarantee))
    if data.get("dp_audit") is not None:
        lines.append(dp_audit.summary_line(data["dp_audit"]))
    baseline = data["dp_baseline"]
    if baseline is not None:
        lines.append(
            f"Utility cost: the same model trained without DP scores {baseline['baseline_accuracy']:.4g} test "
            f"accuracy, against {baseline['accuracy']:.4g} with DP-SGD."
        )
    return lines


def _membership_line(mia: dict[str, Any], guarantee: dict[str, Any] | None) -> str:
    if mia["skipped"]:
        return f"Membership-inference audit skipped: {mia['skipped']}."
    best = next(a for a in mia["attacks"] if a["name"] == mia["headline_attack"])
    line = (
        f"Membership-inference audit: the strongest attack ({best['name']}) tells training rows from unseen test "
        f"rows with AUC {best['auc']:.3f} (0.5 is chance, 1 tells every row apart)"
    )
    bound = mia["epsilon_lower_bound"]
    # older reports bounded each attack at 95% (their maximum only at ~90%): they carry no level
    level = f"{mia['confidence']:.0%} confidence" if "confidence" in mia else "95% confidence per attack"
    if not bound > 0:
        return line + f"; no attack proves any leakage at {level}."
    line += f"; the attacks prove epsilon >= {bound:.3g} at {level}"
    if guarantee is None:
        return line + "."
    # A sound DP-SGD run keeps the proven bound below its guarantee (but for the 5% the confidence allows).
    if bound <= guarantee["epsilon"]:
        return line + f", within the DP guarantee's {guarantee['epsilon']:.4g}."
    return line + f", above the DP guarantee's {guarantee['epsilon']:.4g}: the training setup needs a check."


def _spec(name: str, higher_is_better: bool | None, unit: str, description: str, **kwargs: Any) -> MetricSpec:
    return MetricSpec(name, higher_is_better, unit, description, TAGS, **kwargs)


METRIC_SPECS = (
    _spec(
        "privacy.epsilon",
        False,
        "epsilon",
        "DP-SGD privacy loss over the steps taken (the run's accountant: data.guarantee.accountant)",
        headline=True,
    ),
    _spec(
        "privacy.epsilon_rdp",
        False,
        "epsilon",
        "Epsilon of the same noise and steps under Opacus' RDP accountant (looser; for comparison)",
    ),
    _spec("privacy.epsilon_total", False, "epsilon", "DP-SGD plus privatised data uses, basic composition"),
    _spec("privacy.delta", False, "probability", "DP failure probability"),
    _spec("privacy.noise_multiplier", None, "sigma", "Gaussian noise std over the clipping norm"),
    _spec(
        "privacy.mia_auc",
        False,
        "fraction",
        "AUC of the strongest membership-inference attack (0.5 = chance)",
        headline=True,
    ),
    _spec("privacy.mia_tpr_at_fpr_0.01", False, "fraction", "Attack TPR at 1% FPR"),
    _spec("privacy.mia_tpr_at_fpr_0.001", False, "fraction", "Attack TPR at 0.1% FPR"),
    _spec(
        "privacy.empirical_epsilon_lower_bound",
        False,
        "epsilon",
        "Epsilon the attacks prove, at 95% confidence over all attacks (Bonferroni)",
    ),
    _spec("privacy.accuracy_cost", False, "fraction", "Test accuracy lost to DP-SGD"),
    _spec(
        "privacy.baseline_accuracy",
        None,
        "fraction",
        "Test accuracy of the same model trained without DP (--dp-baseline)",
    ),
    _spec("privacy.max_grad_norm", None, "norm", "Per-sample gradient clipping norm C"),
    _spec(
        "privacy.sample_rate",
        None,
        "probability",
        "Poisson sampling rate q (expected batch over training rows)",
    ),
    _spec("privacy.steps", None, "steps", "DP-SGD steps taken (what epsilon is accounted over)"),
    _spec(
        "privacy.clip_rate_last_epoch",
        None,
        "fraction",
        "Share of per-sample gradients clipped in the last epoch",
    ),
    _spec(
        "privacy.*.group.*.mia_auc",
        False,
        "fraction",
        "Membership-inference AUC (loss threshold) within one sensitive group",
        former_names=("privacy.mia_auc.*.*",),
    ),
    _spec(
        "privacy.audit.epsilon_lower_bound",
        False,
        "epsilon",
        "One-run DP-SGD audit (--dp-audit): epsilon the canaries prove, the larger of the two threat models'; "
        "holds at privacy.audit.confidence",
    ),
    _spec(
        "privacy.audit.epsilon_lower_bound.whitebox",
        False,
        "epsilon",
        "One-run audit, gradient canaries, every noisy update seen; holds at 1 - (1 - confidence) / 2",
    ),
    _spec(
        "privacy.audit.epsilon_lower_bound.blackbox",
        False,
        "epsilon",
        "One-run audit, input canaries scored by the final model's loss; holds at 1 - (1 - confidence) / 2",
    ),
    _spec("privacy.audit.canaries", None, "canaries", "Gradient canaries in the one-run audit (white-box)"),
    _spec("privacy.audit.confidence", None, "probability", "Confidence of privacy.audit.epsilon_lower_bound"),
)


@hookimpl
def audit_metric_specs() -> list[MetricSpec]:
    """Every metric the privacy section can hold."""
    return list(METRIC_SPECS)
