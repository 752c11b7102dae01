"""A run's results under ``vllm bench serve``'s result keys, goodput included.

``vllm bench serve --save-result`` writes ``duration``, ``completed``, ``failed``,
``total_input_tokens``, ``total_output_tokens``, ``request_throughput``,
``request_goodput`` (null without ``--goodput``), ``output_throughput``,
``total_token_throughput`` and, per metric ``ttft``, ``tpot``, ``itl`` and ``e2el``,
``mean_<m>_ms``, ``median_<m>_ms``, ``std_<m>_ms`` and ``p<q>_<m>_ms`` (``p99`` by default).
This module computes the same from kvgate's :class:`~kvgate.bench.runner.RequestRecord`\\ s,
with vLLM's definitions:

* duration: first request sent to last one finished (vLLM times the whole run);
* TPOT of one request: ``(e2e - ttft) / (output tokens - 1)``, for requests of 2+ tokens;
* ITL: every gap between streamed tokens, pooled over requests;
* goodput: requests per second that met every SLO given (``ttft``, ``tpot``, ``e2el`` in ms;
  vLLM's ``--goodput ttft:MS tpot:MS``), over the same duration;
* ``std`` is the population standard deviation (numpy's default, which vLLM uses).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from kvgate.bench.runner import RequestRecord

__all__ = ["GOODPUT_METRICS", "request_tpot_s", "vllm_result"]

#: The SLO names vLLM's ``--goodput`` accepts.
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


def request_tpot_s(record: RequestRecord) -> float | None:
    """vLLM's per-request TPOT, or None for failures and 1-token answers."""
    if not record.ok or record.ttft_s is None or record.e2e_s is None:
        return None
    if record.output_tokens < 2:
        return None
    return (record.e2e_s - record.ttft_s) / (record.output_tokens - 1)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """numpy's default (linear) percentile of ascending ``sorted_values``."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _stats(name: str, values_s: Sequence[float], percentiles: Sequence[float]) -> dict[str, float]:
    ms = sorted(v * 1e3 for v in values_s)
    out: dict[str, float] = {}
    if not ms:
        out[f"mean_{name}_ms"] = out[f"median_{name}_ms"] = out[f"std_{name}_ms"] = 0.0
        for q in percentiles:
            out[f"p{q:g}_{name}_ms"] = 0.0
        return out
    out[f"mean_{name}_ms"] = statistics.fmean(ms)
    out[f"median_{name}_ms"] = statistics.median(ms)
    out[f"std_{name}_ms"] = statistics.pstdev(ms)
    for q in percentiles:
        out[f"p{q:g}_{name}_ms"] = _percentile(ms, q)
    return out


def _good(record: RequestRecord, slos_ms: Mapping[str, float]) -> bool:
    if not record.ok or record.ttft_s is None or record.e2e_s is None:
        return False
    if "ttft" in slos_ms and record.ttft_s * 1e3 > slos_ms["ttft"]:
        return False
    if "e2el" in slos_ms and record.e2e_s * 1e3 > slos_ms["e2el"]:
        return False
    if "tpot" in slos_ms:
        tpot = request_tpot_s(record)
        if tpot is not None and tpot * 1e3 > slos_ms["tpot"]:
            return False
    return True


def vllm_result(
    records: Sequence[RequestRecord],
    *,
    goodput_slos_ms: Mapping[str, float] | None = None,
    percentiles: Sequence[float] = (99,),
) -> dict[str, Any]:
    """``vllm bench serve``'s result keys for ``records`` (see the module docstring).

    ``goodput_slos_ms`` maps ``ttft`` / ``tpot`` / ``e2el`` to milliseconds; an unknown name
    raises ValueError naming the known ones.
    """
    for name in goodput_slos_ms or {}:
        if name not in GOODPUT_METRICS:
            raise ValueError(
                f"goodput: unknown metric {name!r} (known: {', '.join(GOODPUT_METRICS)})"
            )
    ok = [r for r in records if r.ok and r.e2e_s is not None]
    if records:
        start = min(r.start_s for r in records)
        end = max(r.start_s + (r.e2e_s or r.failed_after_s or 0.0) for r in records)
        duration = max(end - start, 0.0)
    else:
        duration = 0.0
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)

    def per_s(n: float) -> float:
        return n / duration if duration > 0 else 0.0

    result: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": per_s(len(ok)),
        "request_goodput": None
        if not goodput_slos_ms
        else per_s(sum(1 for r in ok if _good(r, goodput_slos_ms))),
        "output_throughput": per_s(total_out),
        "total_token_throughput": per_s(total_in + total_out),
    }
    tpots = [t for t in (request_tpot_s(r) for r in ok) if t is not None]
    result.update(_stats("ttft", [r.ttft_s for r in ok if r.ttft_s is not None], percentiles))
    result.update(_stats("tpot", tpots, percentiles))
    result.update(_stats("itl", [gap for r in ok for gap in r.itl_s], percentiles))
    result.update(_stats("e2el", [r.e2e_s for r in ok if r.e2e_s is not None], percentiles))
    return result
