"""The compressed models' metric specs: one per declared metric, derived after every plugin has declared its own."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from audit.compression import compression_specs
from audit.hookspecs import hookimpl
from audit.report import MetricSpec


@hookimpl(wrapper=True)
def audit_metric_specs() -> Generator[None, Any, list[list[MetricSpec]]]:
    """Wrap the hook: add ``compression.*.<metric>`` (and ``.change.``) for every spec the plugins declare."""
    groups = yield
    declared = [spec for group in groups for spec in (group or [])]
    return [*groups, compression_specs(declared)]
