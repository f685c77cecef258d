"""The core's own metrics (performance, efficiency, gate, compliance), declared through the plugins' hook."""

from __future__ import annotations

from audit.hookspecs import hookimpl
from audit.report import MetricSpec

ACCURACY = ("EU AI Act Art. 15",)
EFFICIENCY = ("NIST AI RMF MEASURE 2.12",)


def _performance() -> list[MetricSpec]:
    return [
        MetricSpec(
            "performance.accuracy",
            True,
            "fraction",
            "Top-1 accuracy on the test split (exact 95% interval)",
            ACCURACY,
            headline=True,
        ),
        MetricSpec(
            "performance.balanced_accuracy",
            True,
            "fraction",
            "Mean recall over classes on the test split",
            ACCURACY,
            headline=True,
        ),
        MetricSpec(
            "performance.roc_auc",
            True,
            "fraction",
            "Area under the ROC curve (binary targets)",
            ACCURACY,
            headline=True,
        ),
        MetricSpec("performance.log_loss", False, "nats", "Mean cross-entropy on the test split", ACCURACY),
        # None: the reference measures what the data allows a linear model, not the audited model
        MetricSpec(
            "performance.reference_accuracy",
            None,
            "fraction",
            "Test accuracy (exact 95% interval) of a logistic regression fitted on the same training rows and "
            "input features: the floor a trained model should clear",
            ACCURACY,
        ),
        MetricSpec(
            "performance.reference_balanced_accuracy",
            None,
            "fraction",
            "Mean recall over classes of the reference logistic regression on the test split",
            ACCURACY,
        ),
        MetricSpec("performance.test_rows", None, "rows", "Rows in the test split"),
        MetricSpec(
            "performance.selection_rate",
            None,
            "fraction",
            "Share of positive decisions (audit decisions)",
            headline=True,
        ),
    ]


def _efficiency() -> list[MetricSpec]:
    return [
        MetricSpec(
            "efficiency.*", None, "various", "Training cost, memory, size and latency of the run", EFFICIENCY
        ),
        MetricSpec(
            "efficiency.train_samples_per_s",
            True,
            "samples/s",
            "Training throughput",
            EFFICIENCY,
            headline=True,
        ),
        MetricSpec("efficiency.train_wall_s", False, "s", "Wall time of training", EFFICIENCY, headline=True),
        MetricSpec(
            "efficiency.world_size", None, "processes", "Training processes (torchrun world size)", EFFICIENCY
        ),
        MetricSpec(
            "efficiency.train_samples_per_s_per_rank",
            True,
            "samples/s",
            "Training throughput per process",
            EFFICIENCY,
        ),
        MetricSpec(
            "efficiency.peak_rss_mb",
            False,
            "MiB",
            "Peak resident memory of the process",
            EFFICIENCY,
            headline=True,
        ),
        MetricSpec(
            "efficiency.flops_per_sample",
            None,
            "FLOPs",
            "Forward FLOPs for one row",
            EFFICIENCY,
            headline=True,
        ),
        MetricSpec(
            "efficiency.latency_ms_p50",
            False,
            "ms",
            "Median inference latency at batch 1",
            EFFICIENCY,
            headline=True,
        ),
    ]


def _gate_and_compliance() -> list[MetricSpec]:
    return [
        MetricSpec(
            "gate.passed", True, "flag", "1 when no error-severity rule failed, else 0", headline=True
        ),
        MetricSpec("gate.rules_checked", None, "rules", "(rule, metric) verdicts the policy produced"),
        MetricSpec("gate.rules_failed", False, "rules", "Verdicts that failed an error-severity rule"),
        MetricSpec("gate.rules_warned", False, "rules", "Verdicts that failed a warn-severity rule"),
        MetricSpec(
            "compliance.clauses_with_evidence",
            True,
            "clauses",
            "Catalogued clauses at least one metric of the report speaks to",
        ),
        MetricSpec(
            "compliance.clauses_without_evidence",
            False,
            "clauses",
            "Catalogued clauses no metric of the report speaks to",
        ),
    ]


@hookimpl
def audit_metric_specs() -> list[MetricSpec]:
    """The core's metrics: what each means, which way is better, which clauses it is evidence for."""
    return [*_performance(), *_efficiency(), *_gate_and_compliance()]
