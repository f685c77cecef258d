"""The report's data model: one flat metrics map plus a section per producer; JSON in and out."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import AuditError

SCHEMA_VERSION = "1.1"


@dataclass(frozen=True)
class MetricSpec:
    """Declares a metric (or a family, by glob pattern): direction, unit, meaning, regulatory tags.

    ``headline``: the metric leads the terminal summary and its section's part of the model card.
    ``former_names``: glob patterns this metric was called before a rename, with the same ``*``s in the
    same order, so ``audit gate`` can name the new metric when a policy still uses an old one.
    """

    name: str
    higher_is_better: bool | None
    unit: str
    description: str
    tags: tuple[str, ...] = ()
    headline: bool = False
    former_names: tuple[str, ...] = ()


@dataclass
class Table:
    """A titled table: column names and rows of plain values."""

    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Series:
    """One line or bar set of a figure; ``low``/``high`` are optional interval bounds."""

    name: str
    x: list[Any]
    y: list[float | None]
    low: list[float | None] | None = None
    high: list[float | None] | None = None


@dataclass
class Figure:
    """Figure data (not pixels): the renderers draw it."""

    title: str
    kind: str  # "line", "bar" or "scatter" (a line figure drawn as dots)
    x_label: str
    y_label: str
    series: list[Series]


@dataclass
class Section:
    """One producer's part of the report.

    ``data`` is the section's JSON-able payload (gate verdicts, evidence rows, group audits, attack curves):
    its tables and figures are renderings of it, and any consumer reads ``data``, never a table.
    ``summary`` holds plain-language findings for a reader (the model card, the terminal); ``order``
    places the section in the report (lower first); ``headline`` is filled by the core from the metric specs.
    """

    name: str
    title: str
    metrics: dict[str, float | None] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    order: int = 50
    headline: list[str] = field(default_factory=list)

    def add_metric(self, name: str, value: float | None) -> None:
        """Add ``<section>.<name>``."""
        self.metrics[f"{self.name}.{name}"] = clean_number(value)

    def add_proportion(self, name: str, successes: int, trials: int) -> float:
        """Add ``<section>.<name>`` = successes / trials with its exact 95% interval (``.ci_low``, ``.ci_high``)."""
        from audit.intervals import clopper_pearson

        value = successes / trials if trials else float("nan")
        low, high = clopper_pearson(successes, trials)
        self.add_metric(name, value)
        self.add_metric(f"{name}.ci_low", low)
        self.add_metric(f"{name}.ci_high", high)
        return value


@dataclass
class Report:
    """The single source of truth of a run."""

    run: dict[str, Any]
    metrics: dict[str, float | None] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    schema_version: str = SCHEMA_VERSION

    def add_section(self, section: Section) -> None:
        """Append a section and merge its metrics into the flat map (names must be new and prefixed)."""
        for name, value in section.metrics.items():
            if not name.startswith(section.name + "."):
                raise ValueError(
                    f"metric {name!r} of section {section.name!r} must start with '{section.name}.'"
                )
            if name in self.metrics:
                raise ValueError(f"metric {name!r} is produced twice")
            self.metrics[name] = clean_number(value)
        self.sections.append(section)

    def remove_section(self, name: str) -> None:
        """Drop the section called ``name`` and its metrics (to replace it); no-op when absent."""
        self.sections = [s for s in self.sections if s.name != name]
        self.metrics = {k: v for k, v in self.metrics.items() if not k.startswith(name + ".")}

    def mark_headlines(self, specs: list[MetricSpec]) -> None:
        """Order the sections and list in each the metrics a spec marks ``headline`` (summary, model card)."""
        self.sections.sort(key=lambda s: s.order)
        for section in self.sections:
            section.headline = [
                name
                for name in section.metrics
                if interval_base(name) is None and getattr(spec_for(name, specs), "headline", False)
            ]

    def section(self, name: str) -> Section | None:
        """The section called ``name``, if any."""
        return next((s for s in self.sections if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, with ``content_sha256`` over the body (``manifest`` and ``signature`` come later)."""
        body = {
            "schema_version": self.schema_version,
            "run": self.run,
            "metrics": self.metrics,
            "sections": [_clean(dataclasses.asdict(s)) for s in self.sections],
        }
        body = _clean(body)
        body["content_sha256"] = content_digest(body)
        return body

    def to_json(self) -> str:
        """Serialised JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Rebuild from ``to_dict``'s output."""
        sections = []
        for s in data.get("sections", []):
            figures = [
                Figure(**{**f, "series": [Series(**se) for se in f["series"]]}) for f in s.get("figures", [])
            ]
            tables = [Table(**t) for t in s.get("tables", [])]
            sections.append(Section(**{**s, "tables": tables, "figures": figures}))
        return cls(
            run=data.get("run", {}),
            metrics=dict(data.get("metrics", {})),
            sections=sections,
            schema_version=data.get("schema_version", SCHEMA_VERSION),
        )


INTERVAL_SUFFIXES = (".ci_low", ".ci_high")


def spec_for(name: str, specs: Iterable[MetricSpec]) -> MetricSpec | None:
    """The spec declaring ``name``: an exact name wins over a glob; among globs, the longest pattern."""
    specs = list(specs)
    exact = next((s for s in specs if s.name == name), None)
    if exact is not None:
        return exact
    globs = [s for s in specs if fnmatch.fnmatchcase(name, s.name)]
    return max(globs, key=lambda s: len(s.name), default=None)


def interval_base(name: str) -> str | None:
    """The metric a ``.ci_low`` / ``.ci_high`` name bounds; None for a metric of its own."""
    return next((name[: -len(s)] for s in INTERVAL_SUFFIXES if name.endswith(s)), None)


def metric_segment(value: str) -> str:
    """A free-text value (a group name, say) as one dotted segment of a metric name."""
    return re.sub(r"[^A-Za-z0-9_\-&]+", "_", str(value)).strip("_") or "_"


# Keys of report.json outside ``content_sha256``: the manifest hashes the renderings, which show the digest,
# and the signature covers everything else (the manifest included), so neither can be inside it.
UNDIGESTED_KEYS = ("content_sha256", "manifest", "signature")


def canonical_json(value: Any) -> bytes:
    """The bytes that digests and signatures are computed over: JSON with sorted keys and no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def content_digest(body: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of a report body, without ``content_sha256``, ``manifest`` and ``signature``."""
    payload = {k: v for k, v in body.items() if k not in UNDIGESTED_KEYS}
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def clean_number(value: Any) -> float | int | None:
    """A finite number as float/int; NaN, Inf and None as None (JSON has no NaN)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _clean(obj.item())
    return obj


def read_report(path: str) -> dict[str, Any]:
    """Load report.json, with one clear line when it is unusable."""
    file = Path(path)
    if not file.is_file():
        raise AuditError(f"report {path} does not exist")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AuditError(
            f"report {path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
            "expected a report.json from 'audit train'"
        ) from None
    if not isinstance(data, dict) or "metrics" not in data or not isinstance(data["metrics"], dict):
        raise AuditError(f"report {path} has no 'metrics' map; expected a report.json from 'audit train'")
    _check_schema_version(data.get("schema_version", "1.0"), path)
    return data


def _check_schema_version(version: Any, path: str) -> None:
    """A report from a future major version may mean something else by the same names: refuse it in one line."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise AuditError(
            f"report {path} has schema_version {version!r}; expected a version such as {SCHEMA_VERSION}"
        ) from None
    if major > int(SCHEMA_VERSION.split(".")[0]):
        raise AuditError(
            f"report {path} has schema_version {version}, from a newer rai-audit; this one reads {SCHEMA_VERSION} "
            "and earlier (upgrade rai-audit)"
        )
