"""The PNG of bench/compare.py: one row per task, four panels.

1. Throughput vs concurrency (closed loop) for each server, with the raw forward as horizontal lines
   (dashed: batches of 8, the ceiling; dotted: batch 1).
2. Latency vs concurrency: p50 solid, p99 dashed, log scale; the raw batch-1 forward as a dotted line.
3. Open loop: goodput (answers within the SLO, per second) vs offered rate; the grey diagonal is "every
   request answered in time".
4. Open loop: latency p50 (solid) and p99 (dashed) vs offered rate.

    python bench/plot.py bench/results/compare_cpu.json    # redraw a PNG from a saved JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

STYLE = {
    "service": {"color": "tab:blue", "label": "service (batch 8)"},
    "batch1": {"color": "tab:orange", "label": "service, batching off"},
    "litserve": {"color": "tab:green", "label": "LitServe (batch 8)"},
    "service_w2": {"color": "tab:purple", "label": "service, 2 inference workers"},
    "litserve_w2": {"color": "tab:olive", "label": "LitServe, 2 workers"},
    "service_r2": {"color": "tab:brown", "label": "service, 2 replicas"},
    "service_r2_nginx": {"color": "tab:pink", "label": "service, 2 replicas behind nginx"},
    "service_fp32": {"color": "tab:gray", "label": "service, PRECISION=fp32"},
}


def _points(system: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    return [p for p in system["points"] if p["mode"] == mode]


def _throughput(ax: Axes, task: str, report: dict[str, Any]) -> None:
    for name, system in report["systems"].items():
        points = _points(system, "closed")
        ax.plot([p["concurrency"] for p in points], [p["throughput_rps"] for p in points], "o-", **STYLE[name])
    for run in report["raw"]["batches"]:
        line = "--" if run["batch_size"] > 1 else ":"
        best = " (best way)" if "parallel_workers" in run else ""
        label = f"raw forward, batch {run['batch_size']}{best}"
        ax.axhline(run["images_per_s"], color="black", linestyle=line, label=label)
    ax.set(title=f"{task}: throughput", xlabel="concurrent clients", ylabel="images / s", xscale="log", ylim=(0, None))
    _concurrency_ticks(ax, report)
    ax.legend(fontsize="small")


def _latency(ax: Axes, task: str, report: dict[str, Any], slo_ms: float) -> None:
    for name, system in report["systems"].items():
        points = _points(system, "closed")
        x = [p["concurrency"] for p in points]
        ax.plot(x, [p["p50_ms"] for p in points], "o-", **STYLE[name])
        ax.plot(x, [p["p99_ms"] for p in points], "x--", color=STYLE[name]["color"])
    forward = next(r for r in report["raw"]["batches"] if r["batch_size"] == 1)
    ax.axhline(forward["batch_p50_ms"], color="black", linestyle=":", label="raw forward, batch 1 (p50)")
    ax.axhline(slo_ms, color="red", linewidth=0.8, label=f"SLO {slo_ms:g} ms")
    ax.set(title=f"{task}: latency (solid p50, dashed p99)", xlabel="concurrent clients", ylabel="ms")
    ax.set(xscale="log", yscale="log")
    _concurrency_ticks(ax, report)
    ax.legend(fontsize="small")


def _goodput(ax: Axes, task: str, report: dict[str, Any], slo_ms: float) -> None:
    top = 0.0
    for name, system in report["systems"].items():
        points = _points(system, "open")
        offered = [p["offered_rps"] for p in points]
        ax.plot(offered, [p["goodput_rps"] for p in points], "o-", **STYLE[name])
        top = max([top, *offered])
        budgeted = _points(system, "open_timeout_slo")
        if budgeted:
            x, y = [p["offered_rps"] for p in budgeted], [p["goodput_rps"] for p in budgeted]
            ax.plot(x, y, "s--", color=STYLE[name]["color"], label=f"{STYLE[name]['label']}, callers send timeout")
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8, label="offered")
    ax.set(title=f"{task}: open loop, goodput (p ≤ {slo_ms:g} ms)", xlabel="offered images / s", ylabel="images / s")
    ax.set(xlim=(0, None), ylim=(0, None))
    ax.legend(fontsize="small")


def _open_latency(ax: Axes, task: str, report: dict[str, Any], slo_ms: float) -> None:
    for name, system in report["systems"].items():
        points = _points(system, "open")
        offered = [p["offered_rps"] for p in points]
        ax.plot(offered, [p["p50_ms"] for p in points], "o-", **STYLE[name])
        ax.plot(offered, [p["p99_ms"] for p in points], "x--", color=STYLE[name]["color"])
    ax.axhline(slo_ms, color="red", linewidth=0.8, label=f"SLO {slo_ms:g} ms")
    ax.set(title=f"{task}: open loop latency (solid p50, dashed p99)", xlabel="offered images / s", ylabel="ms")
    ax.set(yscale="log", xlim=(0, None))
    ax.legend(fontsize="small")


def _concurrency_ticks(ax: Axes, report: dict[str, Any]) -> None:
    levels = sorted({p["concurrency"] for s in report["systems"].values() for p in _points(s, "closed")})
    if levels:
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.minorticks_off()


def figure(report: dict[str, Any], path: Path) -> None:
    tasks = report["tasks"]
    slo_ms = report["settings"]["slo_ms"]
    batch = report["settings"]["max_batch_size"]
    STYLE["service"]["label"], STYLE["litserve"]["label"] = f"service (batch {batch})", f"LitServe (batch {batch})"
    fig, axes = plt.subplots(len(tasks), 4, figsize=(22, 4.6 * len(tasks)), squeeze=False)
    for row, (task, figures) in zip(axes, tasks.items(), strict=True):
        _throughput(row[0], task, figures)
        _latency(row[1], task, figures, slo_ms)
        _goodput(row[2], task, figures, slo_ms)
        _open_latency(row[3], task, figures, slo_ms)
    machine, settings = report["machine"], report["settings"]
    quick = " (quick smoke run)" if settings["quick"] else ""
    archs = settings.get("untrained_archs")
    models = f", untrained {', '.join(archs.values())}" if archs else ""
    fig.suptitle(
        f"densepred vs raw forward vs LitServe on {settings.get('device', 'cpu')}: {machine['cpus']} CPUs, "
        f"torch {machine['torch']}, {report['images']['count']} mixed-size images{models}{quick}"
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / (4.6 * len(tasks))))  # leave the title its own strip
    fig.savefig(path, dpi=90)
    plt.close(fig)


def bar_panels(
    path: Path,
    panels: dict[str, dict[str, float]],
    colours: dict[str, list[str]] | None = None,
    reference: float | None = None,
) -> None:
    """Horizontal bar charts side by side, one per panel (title -> {label: value}), for the smaller benches;
    `reference` draws a grey line (a ratio's 1.0)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 2, 3.5), squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels.items(), strict=True):
        ax.barh(list(bars), list(bars.values()), color=(colours or {}).get(title))
        if reference is not None:
            ax.axvline(reference, color="grey", linewidth=1)
        ax.set_title(title)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    figure(json.loads(source.read_text()), source.with_suffix(".png"))
