"""Custom metrics (the ``metrics`` policy) from a worker's registry to a Prometheus scrape.

Three steps, each a function of plain data:

- `export(registry)`: one worker's series as JSON-compatible data (the worker's statistics
  provider ``custom_metrics``; the registry is ``isekai.policies.metrics.REGISTRY``)::

      {"metrics": {FAMILY: {"type": "counter" | "histogram", "help": str,
                            "labels": [label names], "value": "requests" | "duration" | ...,
                            "buckets": [upper bounds] (histograms), "max_series": int,
                            "series": [[[label values], NUMBER | HISTOGRAM], ...]}}}

  where FAMILY is the name a scrape groups samples under (a counter's without ``_total``), a
  counter's NUMBER is its total and a histogram's HISTOGRAM is ``{"buckets": [count per
  bucket, not cumulative, the last for +Inf], "sum": float, "count": int}``;
- `merge(exports)`: several workers' exports summed series by series, in the same shape plus
  ``"conflicts"``: the metrics left out because a worker (on an older config) defines one with
  the same name differently (other type, labels, value or buckets); the first export's
  definition wins, so give the newest worker first. The ``max_series`` cap holds for the sum:
  label sets past it are added to the ``"_other"`` one. Nothing raises on odd input;
- `families(merged)`: ``prometheus_client.core`` metric families for a custom collector
  (``registry.register(collector)`` with ``collect()`` returning them), histogram buckets made
  cumulative as the exposition wants them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["OTHER", "export", "families", "merge"]

OTHER = "_other"
_DEFINITION = ("type", "labels", "value", "buckets")  # what must agree for two series to add up


def export(registry: Any) -> dict[str, Any]:
    """A JSON-compatible snapshot of ``registry``'s series (``CustomMetrics.metrics()``)."""
    metrics: dict[str, Any] = {}
    for series in registry.metrics():
        definition = series.definition
        entry: dict[str, Any] = {
            "type": series.kind,
            "help": definition.help,
            "labels": list(series.labels),
            "value": definition.value,
            "max_series": series.max_series,
        }
        if series.kind == "histogram":
            entry["buckets"] = list(series.bounds)
            entry["series"] = [
                [list(key), {"buckets": counts[:-1], "sum": counts[-1], "count": sum(counts[:-1])}]
                for key, counts in series.values.items()
            ]
        else:
            entry["series"] = [[list(key), total] for key, total in series.values.items()]
        metrics[series.family] = entry
    return {"metrics": metrics}


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(key) == b.get(key) for key in _DEFINITION)


def _add(kind: str, into: Any, value: Any) -> Any:
    # one series' value added to another's (a new object; histograms bucket by bucket)
    if kind == "histogram":
        return {
            "buckets": [x + y for x, y in zip(into["buckets"], value["buckets"], strict=True)],
            "sum": into["sum"] + value["sum"],
            "count": into["count"] + value["count"],
        }
    return into + value


def _definition_ok(entry: Any) -> bool:
    if not isinstance(entry, Mapping) or entry.get("type") not in ("counter", "histogram"):
        return False
    if not isinstance(entry.get("labels", []), list):
        return False
    return entry["type"] == "counter" or isinstance(entry.get("buckets"), list)


def _well_formed(kind: str, names: int, width: int, labels: Any, value: Any) -> bool:
    # a series as `export` makes it: `names` label values; a number, or `width` buckets
    if not isinstance(labels, list) or len(labels) != names:
        return False
    if kind == "histogram":
        return (
            isinstance(value, Mapping)
            and isinstance(value.get("buckets"), list)
            and len(value["buckets"]) == width
            and isinstance(value.get("sum"), (int, float))
            and isinstance(value.get("count"), (int, float))
        )
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merge(exports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several workers' `export` results summed (see the module's docstring)."""
    merged: dict[str, dict[str, Any]] = {}
    sums: dict[str, dict[tuple[str, ...], Any]] = {}
    conflicts = 0
    for one in exports:
        metrics = one.get("metrics") if isinstance(one, Mapping) else None
        if not isinstance(metrics, Mapping):
            continue
        for name, entry in metrics.items():
            if not _definition_ok(entry):
                conflicts += 1
                continue
            if name not in merged:
                merged[name] = {k: copy.deepcopy(v) for k, v in entry.items() if k != "series"}
                sums[name] = {}
            elif not _same(merged[name], entry):
                conflicts += 1
                continue
            head = merged[name]
            kind, names = head["type"], head.get("labels") or []
            width = len(head.get("buckets") or ()) + 1
            cap = head.get("max_series") or 1
            found = sums[name]
            series = entry.get("series")
            for item in series if isinstance(series, list) else ():
                if not (isinstance(item, (list, tuple)) and len(item) == 2):
                    continue
                labels, value = item
                if not _well_formed(kind, len(names), width, labels, value):
                    continue
                key = tuple(str(v) for v in labels)
                if key not in found and len(found) >= cap:
                    key = (OTHER,) * len(names)
                found[key] = value if key not in found else _add(kind, found[key], value)
    for name, head in merged.items():
        head["series"] = [[list(key), value] for key, value in sums[name].items()]
    return {"metrics": merged, "conflicts": conflicts}


def families(merged: Mapping[str, Any]) -> list[Metric]:
    """``prometheus_client`` metric families of a `merge` result, ready for a collector."""
    found: list[Metric] = []
    for name, entry in (merged.get("metrics") or {}).items():
        labels = list(entry.get("labels") or ())
        if entry["type"] == "counter":
            counter = CounterMetricFamily(name, entry.get("help", ""), labels=labels)
            for values, total in entry["series"]:
                counter.add_metric(values, total)
            found.append(counter)
            continue
        histogram = HistogramMetricFamily(name, entry.get("help", ""), labels=labels)
        bounds = [floatToGoString(bound) for bound in entry.get("buckets") or ()] + ["+Inf"]
        for values, data in entry["series"]:
            running, buckets = 0, []
            for bound, count in zip(bounds, data["buckets"], strict=True):
                running += count
                buckets.append((bound, running))
            histogram.add_metric(values, buckets, data["sum"])
        found.append(histogram)
    return found
