"""A hand-written SVG chart of the rows: latency distribution and throughput, per scenario.

One block per (scenario, clients, tasks). Left: each row's latency as three nested
bars on a shared log scale -- p99 (light), p95, p50 (solid) -- so a long tail
shows as a long pale bar. Right: throughput (median) with a whisker from the
slowest to the fastest repeat, on a scale shared within the block. Every bar
has a ``<title>`` tooltip with the exact figures. Plain SVG 1.1: any browser.
"""

from __future__ import annotations

import math
from xml.sax.saxutils import escape, quoteattr

WIDTH = 1000
LABEL_X, LAT_X0, LAT_X1, TPUT_X0, TPUT_X1 = 12, 150, 560, 640, 930
ROW_H, BAR_H, HEAD_H = 24, 14, 46
COLOURS = {"baseline": "#d62728", "engine": "#1f77b4", "engine-reject": "#9467bd", "stdlib": "#7f7f7f"}
FONT = "font-family='system-ui,Segoe UI,Helvetica,Arial,sans-serif'"


def _text(x: float, y: float, content: str, *, size: int = 12, anchor: str = "start",
          weight: str = "normal", fill: str = "#222") -> str:
    return (f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' "
            f"font-weight='{weight}' fill='{fill}' {FONT}>{escape(content)}</text>")


def _rect(x: float, y: float, w: float, h: float, fill: str, opacity: float, tip: str) -> str:
    return (f"<rect x='{x:.1f}' y='{y:.1f}' width='{max(w, 0.5):.1f}' height='{h:.1f}' fill='{fill}' "
            f"fill-opacity='{opacity}'><title>{escape(tip)}</title></rect>")


def _line(x1, y1, x2, y2, stroke="#ccc", width=1.0) -> str:
    return (f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' stroke='{stroke}' "
            f"stroke-width='{width}'/>")


def _log_range(rows: list[dict]) -> tuple[float, float]:
    values = [r[k] for r in rows for k in ("latency_p50_ms", "latency_p99_ms")
              if r.get(k) is not None and r[k] > 0]
    if not values:
        return 1.0, 10.0
    low = 10 ** math.floor(math.log10(min(values)))
    high = 10 ** math.ceil(math.log10(max(values)))
    return low, max(high, low * 10)


def _groups(rows: list[dict]) -> list[tuple[str, int, int, list[dict]]]:
    groups: dict[tuple[str, int, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["clients"], row["tasks"]), []).append(row)
    return [(s, c, t, members) for (s, c, t), members in groups.items()]


def chart(rows: list[dict], *, title: str, subtitle: str) -> str:
    """The whole SVG document as a string."""
    low, high = _log_range(rows)
    span = math.log10(high) - math.log10(low)

    def lat_x(ms: float) -> float:
        ms = min(max(ms, low), high)
        return LAT_X0 + (LAT_X1 - LAT_X0) * (math.log10(ms) - math.log10(low)) / span

    parts: list[str] = []
    y = 28
    parts.append(_text(LABEL_X, y, title, size=17, weight="bold"))
    y += 18
    parts.append(_text(LABEL_X, y, subtitle, size=12, fill="#555"))
    y += 22
    x = LABEL_X
    for label, colour in COLOURS.items():
        parts.append(_rect(x, y - 10, 12, 12, colour, 1.0, label))
        parts.append(_text(x + 16, y, label))
        x += 30 + 7 * len(label)
    for name, opacity in (("p50", 1.0), ("p95", 0.55), ("p99", 0.25)):
        parts.append(_rect(x, y - 10, 12, 12, "#444", opacity, name))
        parts.append(_text(x + 16, y, name))
        x += 52
    y += 10

    for scenario, clients, tasks, members in _groups(rows):
        y += HEAD_H
        parts.append(_text(LABEL_X, y - 22, f"{scenario} · {clients} clients · {tasks} tasks", size=14,
                           weight="bold"))
        parts.append(_text(LAT_X0, y - 6, "latency, ms (log scale)", size=11, fill="#555"))
        parts.append(_text(TPUT_X0, y - 6, "throughput, tasks/s (whisker: min-max over repeats)",
                           size=11, fill="#555"))
        body_h = ROW_H * len(members)
        decade = low
        while decade <= high * 1.0001:
            gx = lat_x(decade)
            parts.append(_line(gx, y, gx, y + body_h))
            parts.append(_text(gx, y + body_h + 13, f"{decade:g}", size=10, anchor="middle", fill="#777"))
            decade *= 10
        top = max((r["spread"]["throughput_per_s"] or [0, 0])[1] or 0 for r in members) or 1.0
        scale = (TPUT_X1 - TPUT_X0) / top
        parts.append(_line(TPUT_X0, y, TPUT_X0, y + body_h, stroke="#999"))
        for i, row in enumerate(members):
            ry = y + i * ROW_H + (ROW_H - BAR_H) / 2
            colour = COLOURS.get(row["label"], "#2ca02c")
            parts.append(_text(LABEL_X, ry + BAR_H - 3, row["label"]))
            tip = (f"{row['label']}: p50 {row['latency_p50_ms']:.1f} ms, p95 {row['latency_p95_ms']:.1f} "
                   f"ms, p99 {row['latency_p99_ms']:.1f} ms, mean {row['latency_mean_ms']:.1f} ms"
                   if row["latency_p50_ms"] is not None else f"{row['label']}: no latencies")
            if row["latency_p50_ms"] is not None:
                for key, opacity in (("latency_p99_ms", 0.25), ("latency_p95_ms", 0.55),
                                     ("latency_p50_ms", 1.0)):
                    parts.append(_rect(LAT_X0, ry, lat_x(row[key]) - LAT_X0, BAR_H, colour, opacity, tip))
                parts.append(_text(lat_x(row["latency_p99_ms"]) + 4, ry + BAR_H - 3,
                                   f"p95 {row['latency_p95_ms']:.1f}", size=10, fill="#333"))
            tput = row["throughput_per_s"] or 0.0
            low_t, high_t = row["spread"]["throughput_per_s"] or (tput, tput)
            parts.append(_rect(TPUT_X0, ry, tput * scale, BAR_H, colour, 0.85,
                               f"{row['label']}: {tput:.1f} tasks/s (min {low_t:.1f}, max {high_t:.1f})"))
            wy = ry + BAR_H / 2
            parts.append(_line(TPUT_X0 + low_t * scale, wy, TPUT_X0 + high_t * scale, wy, "#111", 1.2))
            for wx in (low_t, high_t):
                parts.append(_line(TPUT_X0 + wx * scale, wy - 4, TPUT_X0 + wx * scale, wy + 4, "#111", 1.2))
            parts.append(_text(TPUT_X0 + max(tput, high_t) * scale + 5, ry + BAR_H - 3, f"{tput:.0f}",
                               size=10, fill="#333"))
        y += body_h + 18

    height = y + 12
    head = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height:.0f}' "
            f"viewBox='0 0 {WIDTH} {height:.0f}' role='img' aria-label={quoteattr(title)}>")
    background = f"<rect x='0' y='0' width='{WIDTH}' height='{height:.0f}' fill='#fff'/>"
    return "\n".join(["<?xml version='1.0' encoding='UTF-8'?>", head, f"<title>{escape(title)}</title>",
                      background, *parts, "</svg>", ""])
