"""kvgate.endpoints.promtext against prometheus_client's parser, on real vLLM pages.

Every sample of the captured vLLM pages (tests/data and ../shared/reference) is read by
name and labels with kvgate's line parser and compared with what
``prometheus_client.parser.text_string_to_metric_families`` reads, then again on mutated
pages (families reordered, values as NaN, ±Inf, exponents, timestamps, escaped label
values). Where a page is malformed the two differ on purpose: prometheus_client refuses the
page, kvgate skips what it cannot read, and never raises.

``KVGATE_FUZZ_EXAMPLES=N`` runs N mutations instead of the quick default.
"""

from __future__ import annotations

import math
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from kvgate.endpoints.promtext import MetricNames, MetricSpec, parse_metrics

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    ROOT / "tests/data/vllm-cpu-metrics.txt",
    ROOT / "../shared/reference/vllm-cpu-metrics.txt",
]
EXAMPLES = int(os.environ.get("KVGATE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=timedelta(seconds=5))


def page(path: Path) -> str:
    assert path.is_file(), f"{path}: the captured vLLM /metrics page is missing"
    return path.read_text()


def reference_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def kvgate_value(text: str, name: str, labels: tuple[tuple[str, str], ...]) -> float:
    """One sample through the public parser: a spec as the prefix-queries metric (a float sum)."""
    names = MetricNames(prefix_queries=MetricSpec(name, labels))
    return parse_metrics(text, names, now=0.0).prefix_cache_queries


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def assert_every_sample_agrees(text: str) -> int:
    samples = reference_samples(text)
    # a spec's label filter matches every series carrying those labels: compare sums
    sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for (name, labels), value in samples.items():
        sums[(name, labels)] = sums.get((name, labels), 0.0) + value
    for (name, labels), value in sums.items():
        got = kvgate_value(text, name, labels)
        if math.isnan(value):
            continue  # kvgate's sums skip NaN samples (a NaN gauge reads as absent)
        assert same(got, value), (name, labels, got, value)
    return len(sums)


@pytest.mark.parametrize("path", PAGES, ids=["tests-data", "shared-reference"])
def test_every_sample_of_a_real_vllm_page_reads_the_same(path: Path) -> None:
    assert assert_every_sample_agrees(page(path)) > 300


def families(text: str) -> list[str]:
    """The page cut into metric families (a HELP/TYPE header and its samples)."""
    return [b for b in re.split(r"(?m)^(?=# HELP )", text) if b.strip()]


value_text = st.sampled_from(["0", "1", "2.5", "1e3", "-4", "NaN", "+Inf", "-Inf", "7 1700000"])


@FUZZ
@given(st.randoms(use_true_random=False), st.lists(value_text, min_size=1, max_size=30))
def test_mutated_pages_read_the_same(rnd: object, values: list[str]) -> None:
    blocks = families(page(PAGES[0]))
    rnd.shuffle(blocks)  # type: ignore[attr-defined]
    lines = "".join(blocks).splitlines(keepends=True)
    samples = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
    for value, i in zip(values, rnd.sample(samples, len(values)), strict=False):  # type: ignore[attr-defined]
        lines[i] = lines[i].rsplit(" ", 1)[0] + f" {value}\n"
    text = "".join(lines) + 'extra_metric{path="a\\"b\\\\c\\nd",x="}"} 3\n'
    assert assert_every_sample_agrees(text) > 300


@FUZZ
@given(st.text(alphabet=st.sampled_from('vlm:_{}="\\ \n#0123456789.eE+-InfNa,'), max_size=200))
def test_garbage_never_raises(text: str) -> None:
    metrics = parse_metrics(text, now=0.0)
    assert metrics.waiting_queue_size >= 0 or metrics.waiting_queue_size < 0  # an int


@pytest.mark.parametrize(
    "line",
    [
        "vllm:num_requests_waiting +Inf",
        "vllm:num_requests_waiting NaN",
        "vllm:num_requests_running 1e400",
        'vllm:cache_config_info{block_size="inf",num_gpu_blocks="nan"} 1',
        "vllm:num_requests_waiting{",
        "vllm:num_requests_waiting not-a-number",
    ],
)
def test_counts_that_are_not_finite_numbers_read_as_zero(line: str) -> None:
    """These crashed parse_metrics with OverflowError before (int(inf))."""
    metrics = parse_metrics(line + "\n", now=0.0)
    assert metrics.waiting_queue_size == metrics.running_requests_size == 0
    assert metrics.cache_block_size == metrics.cache_num_gpu_blocks == 0


def test_a_malformed_line_is_a_documented_difference() -> None:
    """prometheus_client refuses the whole page for one bad line; kvgate keeps the rest."""
    text = "vllm:num_requests_waiting 3\nvllm:num_requests_running{ 2\n"
    with pytest.raises(ValueError):
        list(text_string_to_metric_families(text))
    assert parse_metrics(text, now=0.0).waiting_queue_size == 3
