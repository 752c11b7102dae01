"""How each request ended, counted so that every request lands in exactly one bucket.

Buckets: ``ok``; ``429`` (Too Many Requests: llm-d's flow control rejects at capacity and
sheds sheddable requests while saturated); ``503`` (flow control's queue TTL or an unavailable
pool); ``timeout`` (the client gave up: ``--request-timeout``); ``other`` (every other
HTTP status, connection failures, broken streams). An *explicit rejection* is a 429 or 503
that came with a body: the gateway answered rather than dropped the request.
Invariant: ``ok + rejected_429 + unavailable_503 + timeouts + other_errors == requests``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kvgate.bench.runner import RequestRecord

Outcome = Literal["ok", "429", "503", "timeout", "other"]


def outcome(record: RequestRecord) -> Outcome:
    """The bucket of one record."""
    if record.error is None:
        return "ok"
    if record.error == "http_429":
        return "429"
    if record.error == "http_503":
        return "503"
    if record.error == "timeout":
        return "timeout"
    return "other"


def _p90(values: Sequence[float]) -> float | None:
    from kvgate.bench.report import percentile

    return percentile(values, 90)


@dataclass(frozen=True, slots=True)
class OutcomeCounts:
    requests: int
    ok: int
    rejected_429: int
    unavailable_503: int
    timeouts: int
    other_errors: int
    #: 429s and 503s that carried a body (an answer, not a dropped connection)
    explicit_rejections: int
    #: p90 of request sent -> the 429/503 arrived (None without any)
    rejection_p90_s: float | None

    @classmethod
    def of(cls, records: Sequence[RequestRecord]) -> OutcomeCounts:
        buckets = {"ok": 0, "429": 0, "503": 0, "timeout": 0, "other": 0}
        explicit = 0
        answer_s: list[float] = []
        for r in records:
            kind = outcome(r)
            buckets[kind] += 1
            if kind in ("429", "503"):
                if r.error_body:
                    explicit += 1
                if r.failed_after_s is not None:
                    answer_s.append(r.failed_after_s)
        counts = cls(
            requests=len(records),
            ok=buckets["ok"],
            rejected_429=buckets["429"],
            unavailable_503=buckets["503"],
            timeouts=buckets["timeout"],
            other_errors=buckets["other"],
            explicit_rejections=explicit,
            rejection_p90_s=_p90(answer_s),
        )
        assert counts.counted == counts.requests  # every request in exactly one bucket
        return counts

    @property
    def counted(self) -> int:
        return (
            self.ok + self.rejected_429 + self.unavailable_503 + self.timeouts + self.other_errors
        )
