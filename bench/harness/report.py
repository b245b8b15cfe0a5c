"""Medians per (scenario, target, workers), the JSON document, the Markdown table, the chart."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

METRICS = (
    "rps",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "cpu_us_per_req",
    "rss_mib",
    "cpu_pct",
    "foreign_cpu_pct",
)


def median_row(scenario: str, target: str, workers: int, runs: list[dict]) -> dict:
    row: dict = {"scenario": scenario, "target": target, "workers": workers}
    for metric in METRICS:
        values = [r[metric] for r in runs if r.get(metric) is not None]
        if metric == "rss_mib":
            row[metric] = round(max(values), 1) if values else None  # peak over the runs
        else:
            row[metric] = round(statistics.median(values), 3) if values else None
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + v
    row["errors"] = errors
    row["runs"] = runs
    return row


def relate_to_baselines(rows: list[dict], baselines: dict[str, str | None]) -> None:
    """Give every row of a scenario that has a baseline (scenario name -> baseline name) its
    ratios to the baseline's row with the same target and workers: `baseline`,
    `rps_vs_baseline`, `cpu_vs_baseline`, `p99_vs_baseline` (None where either is missing)."""
    index = {(r["scenario"], r["target"], r["workers"]): r for r in rows}
    for row in rows:
        base_name = baselines.get(row["scenario"])
        if not base_name:
            continue
        base = index.get((base_name, row["target"], row["workers"]), {})
        row["baseline"] = base_name
        for metric, key in (
            ("rps", "rps_vs_baseline"),
            ("cpu_us_per_req", "cpu_vs_baseline"),
            ("p99_ms", "p99_vs_baseline"),
        ):
            a, b = row.get(metric), base.get(metric)
            row[key] = round(a / b, 4) if a is not None and b else None


def document(machine: dict, commit: str, dirty: bool, versions: dict, settings: dict, rows):
    return {
        "machine": machine,
        "commit": commit,
        "dirty": dirty,
        "versions": versions,
        "settings": settings,
        "results": rows,
    }


def write_json(doc: dict, path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _reference(rows: list[dict], row: dict) -> dict | None:
    for other in rows:
        if (
            other["target"] == "nginx"
            and other["scenario"] == row["scenario"]
            and other["workers"] == row["workers"]
        ):
            return other
    return None


def _ratio(a, b) -> str:
    if a is None or b in (None, 0):
        return "—"
    return f"{a / b:.2f}"


def _num(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def label(row: dict) -> str:
    return f"{row['target']} ×{row['workers']}"


def markdown(doc: dict) -> str:
    rows = doc["results"]
    m, v = doc["machine"], doc["versions"]
    s = doc.get("settings", {})
    dirty = " (+ uncommitted changes in isekai/)" if doc.get("dirty") else ""
    tools = ", ".join(
        f"{name} {v[key]}"
        for name, key in (("nginx", "nginx"), ("HAProxy", "haproxy"), ("wrk", "wrk"))
        if v.get(key)
    )
    out = [
        f"Commit `{doc['commit'][:12]}`{dirty}; {m['cpu_model']}, {m['cores']} cores, "
        f"kernel {m['kernel']}; Python {v.get('python')}, uvloop {v.get('uvloop')}, "
        f"httptools {v.get('httptools')}, Cython {v.get('cython')}; {tools}. "
        f"Medians of {s.get('runs')} interleaved runs of {s.get('duration'):g} s; {s.get('date')}.",
        "",
        "| scenario | target | rps | p50 ms | p99 ms | p99.9 ms | CPU µs/req | RSS MiB "
        "| rps ÷ nginx | CPU ÷ nginx | p99 ÷ nginx | errors | proxy CPU % | other CPU % |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|",
    ]
    for row in rows:
        ref = _reference(rows, row)
        ref = ref or {}
        errors = ", ".join(f"{k} {n}" for k, n in sorted(row["errors"].items())) or "0"
        out.append(
            f"| {row['scenario']} | {label(row)} | {_num(row['rps'], ',.0f')} "
            f"| {_num(row['p50_ms'], '.2f')} | {_num(row['p99_ms'], '.2f')} "
            f"| {_num(row['p999_ms'], '.2f')} | {_num(row['cpu_us_per_req'], '.1f')} "
            f"| {_num(row['rss_mib'], '.1f')} "
            f"| {_ratio(row['rps'], ref.get('rps'))} "
            f"| {_ratio(row['cpu_us_per_req'], ref.get('cpu_us_per_req'))} "
            f"| {_ratio(row['p99_ms'], ref.get('p99_ms'))} | {errors} "
            f"| {_num(row.get('cpu_pct'), '.0f')} | {_num(row.get('foreign_cpu_pct'), '.0f')} |"
        )
    compared = [r for r in rows if r.get("baseline")]
    if compared:
        out += [
            "",
            "Against the plain scenario, same target, interleaved in the same run "
            "(rps ÷ plain < 1 and CPU ÷ plain > 1 are the feature's cost):",
            "",
            "| scenario | target | rps | rps ÷ plain | CPU µs/req | CPU ÷ plain | p99 ÷ plain "
            "| plain |",
            "|---|---|--:|--:|--:|--:|--:|---|",
        ]
        for row in compared:
            out.append(
                f"| {row['scenario']} | {label(row)} | {_num(row['rps'], ',.0f')} "
                f"| {_num(row['rps_vs_baseline'], '.3f')} "
                f"| {_num(row['cpu_us_per_req'], '.1f')} "
                f"| {_num(row['cpu_vs_baseline'], '.3f')} "
                f"| {_num(row['p99_vs_baseline'], '.3f')} | {row['baseline']} |"
            )
    notes = s.get("notes") or []
    if notes:
        out.append("")
        out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def chart(doc: dict, path: Path) -> bool:
    """Grouped bars (rps, CPU µs/req, p99) per scenario; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = doc["results"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    labels = list(dict.fromkeys(label(r) for r in rows))
    panels = (("rps", "requests/s"), ("cpu_us_per_req", "CPU µs / request"), ("p99_ms", "p99 ms"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 1.6 * len(scenarios) + 3), 11))
    width = 0.8 / max(1, len(labels))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for j, name in enumerate(labels):
            xs, ys = [], []
            for i, scen in enumerate(scenarios):
                for r in rows:
                    if r["scenario"] == scen and label(r) == name and r[metric] is not None:
                        xs.append(i + (j - (len(labels) - 1) / 2) * width)
                        ys.append(r[metric])
            ax.bar(xs, ys, width, label=name)
        ax.set_xticks(range(len(scenarios)), scenarios)
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=min(len(labels), 4), fontsize="small")
    m = doc["machine"]
    fig.suptitle(f"Isekai bench {doc['commit'][:10]} — {m['cpu_model']}, {m['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
