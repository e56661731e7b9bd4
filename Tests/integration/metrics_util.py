"""Scrapes a daemon's `/metrics` and parses it with prometheus_client's text parser."""
from __future__ import annotations

import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# Loopback only: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def metrics_port(proc) -> int:
    """The port a daemon started with `--metrics 127.0.0.1:0` serves on (from its log)."""
    return int(proc.wait_log(r"metrics=127\.0\.0\.1:(\d+).*metrics listening").group(1))


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample: (sample name, labels) -> value."""
    with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=15) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    """The sample with exactly these labels, 0 if absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples, name: str, **labels) -> float:
    """Sum over samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def label_values(samples, name: str, label: str) -> set[str]:
    return {dict(ls)[label] for (n, ls), _ in samples.items() if n == name and label in dict(ls)}


HEX_KEY = re.compile(r"[0-9a-f]{64}")
