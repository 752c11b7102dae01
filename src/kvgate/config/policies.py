"""Named built-in routing policies, each an EndpointPickerConfig text.

Benchmarks and ``kvgate serve --policy NAME`` select them by name; ``kvgate config
show-policy NAME`` prints one, so any policy can be copied and edited as a config file.

=================  ==========================================================================
``random``         random-picker: a uniformly random endpoint (the baseline)
``round-robin``    round-robin-picker: endpoints in turn (kvgate's, not an llm-d type)
``least-queue``    queue-scorer + max-score-picker: the shortest waiting queue
``llm-d-default``  queue 2 / kv-cache-utilization 2 / prefix-cache 3 (GIE chart, KServe default)
``prefix-only``    the approximate prefix-cache-scorer alone
``precise``        precise-prefix-cache-scorer 3 / kv-cache-utilization 2 / queue 2
                   (llm-d's precise prefix-cache guide)
``precise-only``   the precise-prefix-cache-scorer alone
``precise-speculative``  ``precise`` with ``speculativeIndexing: true``: a routed request's
                   prefix counts as held by its endpoint while it is in flight (and 2 s after)
``oracle``         oracle-prefix-cache-scorer 3 / kv-cache-utilization 2 / queue 2: the
                   benchmark's upper bound with perfect knowledge of each replica's cache
``llm-d-default+flow-control``  ``llm-d-default`` with the ``flowControl`` feature gate and
                   llm-d's flow-control defaults (an empty ``flowControl`` section): requests
                   wait at the gateway while the pool is saturated, by priority band
``predicted-latency``  llm-d's predicted-latency guide (prefix affinity gated on predicted
                   TTFT, latency-scorer) with streamingMode on: routes on TTFT/TPOT
                   predicted in-process and the x-slo-* headers; the latency-scorer
                   spreads (headroomSelectionStrategy most) and max-score-picker takes the
                   best, where the guide draws with weighted-random-picker
=================  ==========================================================================
"""

from __future__ import annotations

_HEADER = "apiVersion: llm-d.ai/v1\nkind: EndpointPickerConfig\n"  # llm-d's current generation


def _policy(
    comment: str,
    weighted: list[tuple[str, int | None]],
    picker: str,
    parameters: dict[str, list[str]] | None = None,
) -> str:
    """Config text: ``weighted`` (type, weight) scorers, then ``picker``, in one profile;
    ``parameters``: YAML lines under a plugin type's ``parameters:``."""
    lines = [f"# {line}".rstrip() for line in comment.strip().splitlines()]
    lines.append(_HEADER.rstrip("\n"))
    lines.append("plugins:")
    for type_name, _ in weighted:
        lines.append(f"- type: {type_name}")
        if parameters and type_name in parameters:
            lines.append("  parameters:")
            lines.extend(f"    {line}" for line in parameters[type_name])
    lines.append(f"- type: {picker}")
    lines.append("schedulingProfiles:")
    lines.append("- name: default")
    lines.append("  plugins:")
    for type_name, weight in weighted:
        lines.append(f"  - pluginRef: {type_name}")
        if weight is not None:
            lines.append(f"    weight: {weight}")
    lines.append(f"  - pluginRef: {picker}")
    return "\n".join(lines) + "\n"


_POLICIES: dict[str, str] = {
    "random": _policy("random: a uniformly random endpoint (baseline).", [], "random-picker"),
    "round-robin": _policy(
        "round-robin: endpoints in turn (kvgate's round-robin-picker; not an llm-d type).",
        [],
        "round-robin-picker",
    ),
    "least-queue": _policy(
        "least-queue: the endpoint with the shortest waiting queue (random among equals).",
        [("queue-scorer", None)],
        "max-score-picker",
    ),
    "llm-d-default": _policy(
        "llm-d-default: queue 2 / kv-cache-utilization 2 / approximate prefix-cache 3.\n"
        "llm-d's default scheduler configuration (GIE's inferencepool chart, KServe).",
        [("queue-scorer", 2), ("kv-cache-utilization-scorer", 2), ("prefix-cache-scorer", 3)],
        "max-score-picker",
    ),
    "prefix-only": _policy(
        "prefix-only: the approximate prefix-cache-scorer alone (no load signal).",
        [("prefix-cache-scorer", None)],
        "max-score-picker",
    ),
    "precise": _policy(
        "precise: precise-prefix-cache 3 / kv-cache-utilization 2 / queue 2.\n"
        "llm-d's precise prefix-cache guide: KV events from the model servers.",
        [
            ("precise-prefix-cache-scorer", 3),
            ("kv-cache-utilization-scorer", 2),
            ("queue-scorer", 2),
        ],
        "max-score-picker",
    ),
    "precise-speculative": _policy(
        "precise-speculative: precise with speculativeIndexing (kvgate: held while in flight).\n"
        "A routed request's prefix counts as held by its endpoint until it completes, plus\n"
        "speculativeTTL, so requests sharing it follow while it waits in a queue.",
        [
            ("precise-prefix-cache-scorer", 3),
            ("kv-cache-utilization-scorer", 2),
            ("queue-scorer", 2),
        ],
        "max-score-picker",
        {"precise-prefix-cache-scorer": ["speculativeIndexing: true", "speculativeTTL: 2s"]},
    ),
    "precise-only": _policy(
        "precise-only: the precise-prefix-cache-scorer alone (no load signal).",
        [("precise-prefix-cache-scorer", None)],
        "max-score-picker",
    ),
    "oracle": _policy(
        "oracle: oracle-prefix-cache 3 / kv-cache-utilization 2 / queue 2.\n"
        "An upper bound for benchmarks: each replica's true cache contents.",
        [
            ("oracle-prefix-cache-scorer", 3),
            ("kv-cache-utilization-scorer", 2),
            ("queue-scorer", 2),
        ],
        "max-score-picker",
    ),
}

# llm-d's flow control switched on over its default scheduler: the gate plus an empty section,
# which leaves every limit and policy at llm-d's default (no global byte or request limit,
# bands provisioned per priority, global-strict fairness, FCFS ordering, utilization-detector).
_POLICIES["llm-d-default+flow-control"] = (
    "# llm-d-default+flow-control: llm-d-default behind llm-d's flow control (defaults).\n"
    + "".join(ln + "\n" for ln in _POLICIES["llm-d-default"].splitlines() if ln[:1] != "#")
    + "featureGates:\n- flowControl\nflowControl: {}\n"
)

# llm-d's predicted-latency guide (guides/predicted-latency-routing), streaming: kvgate's
# clients and benchmarks stream, so TTFT and TPOT are trained separately (docs/latency.md).
_POLICIES["predicted-latency"] = (
    "# predicted-latency: llm-d's predicted-latency guide, streamingMode on.\n"
    "# TTFT/TPOT predicted per candidate in-process; x-slo-ttft-ms / x-slo-tpot-ms honoured.\n"
    + _HEADER
    + """plugins:
- type: approx-prefix-cache-producer
- type: predicted-latency-producer
  parameters:
    streamingMode: true
- type: prefix-cache-affinity-filter
  name: loose-affinity-filter
  parameters:
    affinityThreshold: 0.8
    ttftSource: latencyPredictor
    maxTTFTPenaltyMs: 5000
- type: latency-scorer
  parameters:
    # llm-d's default is least (pack toward the SLO); in short bursts spreading held ITL p90 at
    # 50 ms up to >= 1.54x llm-d-default's rate where least reached 0.65x (docs/latency.md)
    headroomSelectionStrategy: most
# the guide's weighted-random-picker placed new prefix groups by lot: one replica of four drew
# 9 of 24 groups, overloaded, tripped the affinity gate and its groups spread over two
# replicas for good (hit rate 97% -> 72-76%); taking the best score places each on the
# replica with the most headroom (shared-prefix capacity 0.80x -> 1.00x llm-d-default's)
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: loose-affinity-filter
  - pluginRef: latency-scorer
  - pluginRef: max-score-picker
"""
)

#: Every built-in policy name, in the order ``kvgate config policies`` lists them.
POLICY_NAMES: tuple[str, ...] = tuple(_POLICIES)

#: The policy used when no configuration is given (llm-d's default).
DEFAULT_POLICY = "llm-d-default"


def policy_config_text(name: str) -> str:
    """The EndpointPickerConfig YAML of built-in policy ``name``; KeyError names the choices."""
    try:
        return _POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})") from None


def policy_summary(name: str) -> str:
    """The first comment line of a policy, for listings."""
    first = policy_config_text(name).splitlines()[0]
    return first.removeprefix("# ").split(": ", 1)[-1]
