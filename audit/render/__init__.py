"""Renderings of report.json: HTML for reviewers, Markdown for pull requests, a model card.

No computation here: every renderer reads a report dict (report.json) and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from audit.render.html import render_html
from audit.render.markdown import md_escape, render_markdown
from audit.render.model_card import render_model_card

# format name -> (file name beside report.json, renderer)
RENDERINGS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "html": ("report.html", render_html),
    "md": ("report.md", render_markdown),
    "model-card": ("model_card.md", render_model_card),
}


def render_beside(
    report: dict[str, Any], report_path: Path, formats: list[str] | None = None
) -> dict[str, tuple[Path, str]]:
    """Renderings of ``report`` by format: (the file it belongs in next to ``report_path``, its text)."""
    files = {}
    for fmt in formats or list(RENDERINGS):
        name, render = RENDERINGS[fmt]
        # report.json renders to report.html/.md; a renamed JSON keeps its stem, the model card its own name
        target = name if fmt == "model-card" else report_path.stem + Path(name).suffix
        files[fmt] = (report_path.parent / target, render(report))
    return files


__all__ = ["RENDERINGS", "md_escape", "render_beside", "render_html", "render_markdown", "render_model_card"]
