"""The compliance report in the format asked for: JSON, Markdown or HTML.

:mod:`pdp.audit.report` gathers a report and writes it as JSON and Markdown;
:mod:`pdp.audit.report_html` draws it as one page from the same structure. Picking one
happens here, so the page depends on the report and the report on nothing of the page.
"""

from __future__ import annotations

from pdp.audit import report_html
from pdp.audit.report import Report, ReportError, render_json, to_markdown

FORMATS = ("html", "json", "md")


def render(report: Report, fmt: str) -> str:
    """The report in one of :data:`FORMATS`."""
    if fmt == "json":
        return render_json(report)
    if fmt == "md":
        return to_markdown(report)
    if fmt == "html":
        return report_html.render(report)
    raise ReportError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
