"""Custom metrics from a registry to the exposition text: `export` of one worker's series,
`merge` of several workers' exports (sums, the cap, a worker on another definition), and
`families` read by a real prometheus-client registry through a custom collector."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest

from isekai.config.metrics_policy import CustomCounter, CustomHistogram, MetricsConfig
from isekai.observability.custom_metrics import export, families, merge
from isekai.policies.metrics import CustomMetrics, MetricsPolicy

HITS = CustomCounter(
    name="api_hits_total", help="Hits by tier", labels=(("tier", "ctx:tier"), ("code", "status"))
)
SECONDS = CustomHistogram(
    name="api_seconds", help="Latency by tier", labels=(("tier", "ctx:tier"),), buckets=(0.1, 1.0)
)


def worker(counts, observations):
    """A registry as one worker would hold it: ``counts`` (labels, amount) into HITS,
    ``observations`` (labels, seconds) into SECONDS."""
    registry = CustomMetrics()
    hits, seconds = registry.acquire(HITS), registry.acquire(SECONDS)
    for key, amount in counts:
        hits.add(key, amount)
    for key, value in observations:
        seconds.observe(key, value)
    return registry


class Collector:
    def __init__(self, merged):
        self.merged = merged

    def collect(self):
        return families(self.merged)


def exposition(merged) -> str:
    registry = CollectorRegistry()
    registry.register(Collector(merged))
    return generate_latest(registry).decode()


def test_custom_metrics_export_is_json_with_per_bucket_counts():
    registry = worker(
        [(("gold", "200"), 1), (("gold", "200"), 1), (("free", "404"), 1)],
        [(("gold",), 0.05), (("gold",), 0.1), (("gold",), 0.5), (("gold",), 3.0)],
    )
    data = export(registry)
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "metrics": {
            "api_hits": {
                "type": "counter",
                "help": "Hits by tier",
                "labels": ["tier", "code"],
                "value": "requests",
                "max_series": 1000,
                "series": [[["gold", "200"], 2], [["free", "404"], 1]],
            },
            "api_seconds": {
                "type": "histogram",
                "help": "Latency by tier",
                "labels": ["tier"],
                "value": "duration",
                "max_series": 1000,
                "buckets": [0.1, 1.0],
                # 0.05 and 0.1 (le is inclusive), 0.5, then 3.0 past the last bound
                "series": [[["gold"], {"buckets": [2, 1, 1], "sum": 3.65, "count": 4}]],
            },
        }
    }


def test_custom_metrics_merge_sums_two_workers_and_exposes_cumulative_buckets():
    one = export(worker([(("gold", "200"), 2)], [(("gold",), 0.05), (("free",), 2.0)]))
    two = export(worker([(("gold", "200"), 3), (("free", "500"), 1)], [(("gold",), 0.5)]))
    merged = merge([one, two])
    assert merged["conflicts"] == 0
    hits = merged["metrics"]["api_hits"]["series"]
    assert hits == [[["gold", "200"], 5], [["free", "500"], 1]]
    seconds = dict((tuple(k), v) for k, v in merged["metrics"]["api_seconds"]["series"])
    assert seconds[("gold",)] == {"buckets": [1, 1, 0], "sum": 0.55, "count": 2}
    assert seconds[("free",)] == {"buckets": [0, 0, 1], "sum": 2.0, "count": 1}
    text = exposition(merged)
    assert "# HELP api_hits_total Hits by tier\n# TYPE api_hits_total counter\n" in text
    assert 'api_hits_total{code="200",tier="gold"} 5.0\n' in text
    assert 'api_hits_total{code="500",tier="free"} 1.0\n' in text
    assert "# TYPE api_seconds histogram\n" in text
    assert 'api_seconds_bucket{le="0.1",tier="gold"} 1.0\n' in text
    assert 'api_seconds_bucket{le="1.0",tier="gold"} 2.0\n' in text
    assert 'api_seconds_bucket{le="+Inf",tier="gold"} 2.0\n' in text
    assert 'api_seconds_count{tier="gold"} 2.0\n' in text
    assert 'api_seconds_sum{tier="gold"} 0.55\n' in text
    assert 'api_seconds_bucket{le="1.0",tier="free"} 0.0\n' in text
    assert 'api_seconds_bucket{le="+Inf",tier="free"} 1.0\n' in text


def test_custom_metrics_cap_counts_new_label_sets_as_other():
    capped = CustomCounter(name="by_user", labels=(("user", "param:id"),), max_series=2)
    registry = CustomMetrics()
    series = registry.acquire(capped)
    for user in ("a", "b", "c", "d", "a"):
        series.add((user,), 1)
    data = export(registry)["metrics"]["by_user"]["series"]
    assert data == [[["a"], 2], [["b"], 1], [["_other"], 2]]
    # the cap holds for the sum of workers: another worker's own two label sets join _other
    other = CustomMetrics()
    theirs = other.acquire(capped)
    theirs.add(("x",), 4)
    theirs.add(("b",), 1)
    merged = merge([export(registry), export(other)])["metrics"]["by_user"]["series"]
    assert merged == [[["a"], 2], [["b"], 2], [["_other"], 6]]
    assert 'by_user_total{user="_other"} 6.0' in exposition(
        merge([export(registry), export(other)])
    )


def test_custom_metrics_histogram_cap_folds_buckets_into_other():
    capped = CustomHistogram(name="t", labels=(("r", "route"),), buckets=(1.0,), max_series=1)
    registry = CustomMetrics()
    series = registry.acquire(capped)
    series.observe(("a",), 0.5)
    series.observe(("b",), 2.0)
    series.observe(("c",), 0.5)
    assert export(registry)["metrics"]["t"]["series"] == [
        [["a"], {"buckets": [1, 0], "sum": 0.5, "count": 1}],
        [["_other"], {"buckets": [1, 1], "sum": 2.5, "count": 2}],
    ]


def test_custom_metrics_merge_keeps_the_first_definition_and_counts_conflicts():
    newer = export(worker([(("gold", "200"), 1)], []))
    older_registry = CustomMetrics()
    older_hits = CustomCounter(name="api_hits", labels=(("tier", "ctx:tier"),))
    older_registry.acquire(older_hits).add(("gold",), 7)
    older = export(older_registry)
    merged = merge([newer, older, {"metrics": {"api_hits": {"type": "gauge"}}}, {}, "junk"])
    assert merged["conflicts"] == 2
    assert merged["metrics"]["api_hits"]["labels"] == ["tier", "code"]
    assert merged["metrics"]["api_hits"]["series"] == [[["gold", "200"], 1]]
    # malformed series are skipped, never raised on
    bad = {"metrics": {"api_hits": {**newer["metrics"]["api_hits"], "series": [[["x"], 1], 5]}}}
    assert merge([newer, bad])["metrics"]["api_hits"]["series"] == [[["gold", "200"], 1]]
    odd = {
        "metrics": {
            "h": {"type": "histogram", "labels": "x"},
            "c": {"type": "counter", "series": 5},
        }
    }
    assert merge([odd]) == {
        "metrics": {"c": {"type": "counter", "series": []}},
        "conflicts": 1,
    }
    assert merge([]) == {"metrics": {}, "conflicts": 0}
    assert exposition(merge([])) == ""


def test_custom_metrics_series_outlive_a_policy_rebuilt_with_the_same_metric():
    registry = CustomMetrics()
    first = MetricsPolicy(MetricsConfig(counters=(HITS,)), registry)
    registry.acquire(HITS).add(("gold", "200"), 3)
    registry.release(HITS)
    # a reload: the new instance is built before the old one is closed
    second = MetricsPolicy(MetricsConfig(counters=(HITS,), histograms=(SECONDS,)), registry)
    first.close()
    first.close()  # closing twice releases once
    assert export(registry)["metrics"]["api_hits"]["series"] == [[["gold", "200"], 3]]
    second.close()
    assert export(registry) == {"metrics": {}}
