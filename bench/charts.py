"""PNG charts of benchmark result files (issue 7): one chart per JSON file, beside it.

    python -m bench.charts docs/benchmarks/2026-12-02/*.json

Reads the files bench_http, bench_totp_verify and bench_peer write (their ``summary`` rows: an
``endpoint`` or ``target`` name, ``workers``, ``connections``, ``rps_median``, ``p99_ms_median``)
and draws, per file, requests/s (log scale: the peer answers a few per second, the trivial route
thousands) and p99 latency for every name, grouped by workers x connections, each bar labelled
with its figure. The ratios the file records are written under the title. Needs matplotlib
(the ``bench`` extra: ``pip install -e '.[bench]'``); the benchmarks themselves do not.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any


def _name(row: dict[str, Any]) -> str:
    return str(row.get("endpoint") or row.get("target") or "?")


def _connections(row: dict[str, Any], document: dict[str, Any]) -> int:
    if "connections" in row:
        return int(row["connections"])
    configured = document.get("settings", {}).get("connections", 0)
    return int(configured[0] if isinstance(configured, list) else configured)


def _ratio_lines(document: dict[str, Any]) -> list[str]:
    lines = []
    for q in document.get("ratios", []):
        where = f"{q.get('workers')} w, {q.get('connections', '')} c".replace(", c", "")
        name = q.get("endpoint") or (f"unlock / {q['reference']}" if "reference" in q else "")
        if not name and "ratio" in q:
            name = "FairUnlock / privacyIDEA cheap"
        ratio = q["ratio"]
        text = f"{ratio:.1%}" if ratio < 1 else f"{ratio:.1f}x"
        lines.append(f"{name} ({where}): {text}")
    return lines


def _title(path: Path, document: dict[str, Any]) -> str:
    title = f"{path.stem} — {document.get('started', '')[:16]}"
    database = document.get("settings", {}).get("database")
    if database:
        title += f" — {database}"
    subtitle = textwrap.fill("; ".join(_ratio_lines(document)), width=105)
    return title + ("\n" + subtitle if subtitle else "")


def _p99_target(axis: Any) -> None:
    axis.axhline(25, linestyle="--", color="grey", linewidth=1)
    axis.annotate(
        "p99 target 25 ms (32 connections)",
        (0, 25),
        xycoords=("axes fraction", "data"),
        fontsize="small",
        color="grey",
        xytext=(4, 3),
        textcoords="offset points",
    )


def chart(path: Path) -> Path:
    """Write ``path`` with .png instead of .json; return the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    document = json.loads(path.read_text())
    rows = document.get("summary") or []
    if not rows:
        raise ValueError(f"{path}: no summary rows")
    groups = sorted({(int(r["workers"]), _connections(r, document)) for r in rows})
    names = list(dict.fromkeys(_name(r) for r in rows))
    by_key = {(_name(r), int(r["workers"]), _connections(r, document)): r for r in rows}

    figure, (rate_axis, p99_axis) = plt.subplots(
        1, 2, figsize=(max(10.0, 2.2 * len(groups) * max(1, len(names)) / 2), 5.5)
    )
    width = 0.8 / len(names)
    all_rates: list[float] = []
    all_p99s: list[float] = []
    for i, name in enumerate(names):
        xs, rates, p99s = [], [], []
        for g, (workers, connections) in enumerate(groups):
            row = by_key.get((name, workers, connections))
            if row is None:
                continue
            xs.append(g + i * width)
            rates.append(float(row["rps_median"]))
            p99s.append(float(row["p99_ms_median"]))
        all_rates += rates
        all_p99s += p99s
        bars = rate_axis.bar(xs, rates, width, label=name)
        rate_axis.bar_label(bars, labels=[f"{v:,.0f}" if v >= 10 else f"{v:.1f}" for v in rates])
        bars = p99_axis.bar(xs, p99s, width, label=name)
        p99_axis.bar_label(bars, labels=[f"{v:,.0f}" for v in p99s])
    ticks = [g + width * (len(names) - 1) / 2 for g in range(len(groups))]
    labels = [f"{w} worker{'s' if w > 1 else ''}\n{c} connections" for w, c in groups]
    for axis in (rate_axis, p99_axis):
        axis.set_xticks(ticks, labels)
        axis.set_yscale("log")
        axis.grid(axis="y", which="both", alpha=0.3)
    # Room below the smallest bar and above the tallest one for its label and the legend.
    rate_axis.set_ylim(min(all_rates) / 2, max(all_rates) * 12)
    p99_axis.set_ylim(min(all_p99s) / 2, max(all_p99s) * 4)
    rate_axis.set_ylabel("requests/s (median of runs, log scale)")
    p99_axis.set_ylabel("p99 latency, ms (median of runs, log scale)")
    rate_axis.legend(fontsize="small", loc="upper left")
    if any("meets_p99" in q for q in document.get("ratios", [])):
        _p99_target(p99_axis)
    figure.suptitle(_title(path, document), fontsize="medium")
    figure.tight_layout()
    out = path.with_suffix(".png")
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("files", nargs="+", type=Path, help="result JSON files")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            print(f"chart: {chart(path)}")
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            print(f"chart: {path}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
