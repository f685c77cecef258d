"""The report data model: JSON round trip, content digest, sections and their metrics."""

import json

from audit.report import Figure, Report, Section, Series, content_digest


def test_round_trip_and_digest():
    report = Report(run={"seed": 1})
    section = Section("performance", "Performance")
    section.add_metric("accuracy", 0.9)
    section.add_metric("nan_metric", float("nan"))
    section.figures.append(Figure("f", "line", "x", "y", [Series("s", [1, 2], [0.1, 0.2])]))
    report.add_section(section)
    data = report.to_dict()
    assert data["metrics"]["performance.nan_metric"] is None
    assert data["content_sha256"] == content_digest(data)
    again = Report.from_dict(json.loads(json.dumps(data))).to_dict()
    assert again == data
