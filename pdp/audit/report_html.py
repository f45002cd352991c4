"""The HTML compliance report: one self-contained page, rendered by Jinja2.

Jinja2 escapes every value the template prints (autoescaping is on for the whole
template), so agent names, purposes, reasons and alert messages, which people and agents
write, always show as text. The page needs nothing else: the CSS is inline, the chart of
decisions over time is an inline SVG drawn here, and a Content-Security-Policy forbids
scripts and every fetch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import jinja2

from pdp.audit.report import (
    AgentReport,
    Bucket,
    Decisions,
    Report,
    Unit,
    bucket_label,
    counts_text,
    period_text,
    result_text,
    signed_text,
    verdict,
    when,
)

WIDTH, HEIGHT = 760, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 40, 12, 44  # the plot's margins: room for the axes' labels
X_LABELS = 6  # at most this many bucket labels under the bars
BAR_WIDTH = 48  # the widest a bar gets (a short timeline has few, wide slots)


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    allowed_y: float
    allowed_height: float
    denied_y: float
    denied_height: float
    title: str


@dataclass(frozen=True)
class Tick:
    """A labelled position on an axis."""

    position: float
    label: str


@dataclass(frozen=True)
class Chart:
    """An SVG bar chart's geometry: allowed and denied decisions stacked per bucket."""

    width: int
    height: int
    left: int
    bottom: float  # the y of the x axis
    right: int
    bars: tuple[Bar, ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    label: str  # what the chart shows, for screen readers


def chart(decisions: Decisions, unit: Unit) -> Chart | None:
    """The chart of a timeline; None when there is no decision to draw."""
    buckets = decisions.timeline
    if not buckets or not decisions.total:
        return None
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    base = HEIGHT - BOTTOM
    top = max((b.allowed + b.denied for b in buckets), default=0) or 1
    step = plot_width / len(buckets)
    width = max(min(step - min(step * 0.15, 2.0), BAR_WIDTH), 0.5)
    bars = []
    for index, bucket in enumerate(buckets):
        allowed = bucket.allowed / top * plot_height
        denied = bucket.denied / top * plot_height
        bars.append(
            Bar(
                x=round(LEFT + (index + 0.5) * step - width / 2, 2),
                width=round(width, 2),
                allowed_y=round(base - allowed, 2),
                allowed_height=round(allowed, 2),
                denied_y=round(base - allowed - denied, 2),
                denied_height=round(denied, 2),
                title=_bar_title(bucket, unit),
            )
        )
    y_ticks = tuple(
        Tick(round(base - value / top * plot_height, 2), str(value))
        for value in sorted({0, top // 2, top})
    )
    every = max(1, -(-len(buckets) // X_LABELS))
    x_ticks = tuple(
        Tick(round(LEFT + (index + 0.5) * step, 2), _short_label(buckets[index].start, unit))
        for index in range(0, len(buckets), every)
    )
    return Chart(
        WIDTH,
        HEIGHT,
        LEFT,
        base,
        WIDTH - RIGHT,
        tuple(bars),
        y_ticks,
        x_ticks,
        f"Decisions per {unit}: {counts_text(decisions)}",
    )


def _bar_title(bucket: Bucket, unit: Unit) -> str:
    return f"{bucket_label(bucket.start, unit)}: {bucket.allowed} allowed, {bucket.denied} denied"


def _short_label(start: datetime, unit: Unit) -> str:
    return start.strftime("%m-%d %H:00" if unit == "hour" else "%Y-%m-%d")


@cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pdp.audit", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["when"] = _when_or_dash
    return environment.get_template("report.html.j2")


def _when_or_dash(value: datetime | None) -> str:
    return "–" if value is None else when(value)


def render(report: Report) -> str:
    """The page."""
    agents: list[tuple[AgentReport, Chart | None]] = [
        (agent, chart(agent.decisions, report.unit)) for agent in report.agents
    ]
    values: dict[str, Any] = {
        "report": report,
        "agents": agents,
        "overall": chart(report.decisions, report.unit) if len(report.agents) > 1 else None,
        "period": period_text(report.period),
        "generated": when(report.generated_at.astimezone(UTC)),
        "verdict": verdict(report),
        "counts": counts_text,
        "result_text": result_text,
        "signed_text": signed_text,
        "unit": report.unit,
    }
    return _template().render(values)
