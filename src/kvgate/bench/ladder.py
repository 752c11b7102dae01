"""The overload ladder: per policy and rate stage, what got through and how the rest ended.

For a run over a rate ladder (``--scale``: 3 -> 60 req/s) one row per stage gives the output
tokens/s the pool generated while the stage's load was offered (``generated``), that as a share
of the policy's best stage (``% of peak``), the stage's own requests' output tokens/s over their
whole span (``of its requests``: it also counts how long they waited, so a queue that holds
requests for a minute lowers it while the pool stays busy), and the stage's requests by
outcome: explicit rejections (429/503 with a body, and how fast they came) against timeouts and
other errors. "Flow control keeps >= 80 % of peak throughput at every rate and the excess gets
explicit answers within its TTL" reads as: ``% of peak`` >= 80 in every row, and the stage's
failures are in the 429/503 columns, not under timeouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvgate.bench.report import StageSummary, Summary


def peak_output_tok_s(stages: Sequence[StageSummary]) -> float:
    return max((st.generated_tok_s for st in stages), default=0.0)


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.0f}"


def ladder_rows(summary: Summary) -> list[str]:
    """Markdown rows of one policy's stages."""
    peak = peak_output_tok_s(summary.stages)
    rows = []
    for st in summary.stages:
        share = f"{100 * st.generated_tok_s / peak:.0f}%" if peak > 0 else "–"
        rate = "–" if st.rate is None else f"{st.rate:g}"
        rows.append(
            f"| {summary.policy} | {rate} | {st.requests} | {st.ok} | {st.generated_tok_s:.0f} "
            f"| {share} | {st.output_tok_s:.0f} | {st.rejected_429} | {st.unavailable_503} | {st.explicit_rejections} "
            f"| {_ms(st.rejection_p90_s)} | {st.timeouts} | {st.other_errors} "
            f"| {_ms(st.ttft_p90_s)} |"
        )
    return rows


def ladder_markdown(summaries: Sequence[Summary]) -> str | None:
    """The ladder table of every summary with more than one stage, or None."""
    laddered = [s for s in summaries if len(s.stages) > 1]
    if not laddered:
        return None
    head = (
        "\n## Overload ladder\n\n"
        "Per rate stage: `generated` is the output tok/s the pool produced while the stage's "
        "load was offered, `% of peak` that over the policy's best stage; `of its requests` "
        "is the stage's own requests' output tok/s over their whole span (waiting included); "
        "`explicit` counts 429/503 answers with a body, `answer p90` how long they took; "
        "`timeouts` are requests the client gave up on.\n\n"
        "| policy | rate req/s | requests | ok | generated tok/s | % of peak "
        "| of its requests tok/s | 429 | 503 "
        "| explicit | answer p90 ms | timeouts | other errors | TTFT p90 ms |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    return head + "\n".join(row for s in laddered for row in ladder_rows(s)) + "\n"
