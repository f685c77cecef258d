"""Renderings of report.json: HTML for reviewers, Markdown for pull requests. No computation here."""

from audit.render.html import render_html
from audit.render.markdown import render_markdown

__all__ = ["render_html", "render_markdown"]
