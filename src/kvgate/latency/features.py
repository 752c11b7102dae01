"""The features a latency prediction is made from: what is known of one candidate when the
request is scheduled, scaled so that every feature is of order 1.

TTFT features (:data:`TTFT_FEATURES`), per candidate endpoint::

    1, new/1e3, (new/1e3)², cached/1e3, inflight_tokens/1e3, inflight_requests/10,
    waiting/10, running/10, kv_usage

where ``new`` is the prompt tokens the endpoint must prefill (the prompt minus the prefix it
holds, per the prefix producer's match), ``cached`` the prefix it holds, ``inflight_*`` what
kvgate has sent to it that has not completed (``inflight-load-producer``), ``waiting`` and
``running`` the model server's queue and batch (``vllm:num_requests_waiting`` / ``_running``)
and ``kv_usage`` its KV-cache utilization (0..1). The quadratic term is the prefill's
self-attention (the simulator's ``c·n²``).

TPOT features (:data:`TPOT_FEATURES`)::

    1, (inflight_requests + 1)/10, running/10, waiting/10, kv_usage, inflight_tokens/1e3

A decode step costs ``d0 + d1 · batch`` on the calibrated profiles, and the batch the request
joins is what is running plus itself.

Invariant: the order of each tuple is the order of the weights in :mod:`kvgate.latency.prior`
and of the models in :mod:`kvgate.latency.predictor`; the names below are logged and
documented (docs/latency.md), so a new feature is appended, never inserted.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["TPOT_FEATURES", "TTFT_FEATURES", "EndpointLoad", "tpot_features", "ttft_features"]

TTFT_FEATURES: tuple[str, ...] = (
    "bias",
    "new_ktokens",
    "new_ktokens_sq",
    "cached_ktokens",
    "inflight_ktokens",
    "inflight_requests_10",
    "waiting_10",
    "running_10",
    "kv_usage",
)
TPOT_FEATURES: tuple[str, ...] = (
    "bias",
    "batch_10",
    "running_10",
    "waiting_10",
    "kv_usage",
    "inflight_ktokens",
)


class EndpointLoad(NamedTuple):
    """One candidate's state at decision time, in raw units (tokens, requests, fraction).

    A NamedTuple, not a frozen dataclass: one is built per candidate per request, and a
    tuple builds in a third of the time (the 16-endpoint budget of docs/latency.md).
    """

    prompt_tokens: int
    cached_tokens: int  # prefix the endpoint holds, <= prompt_tokens
    inflight_requests: int
    inflight_tokens: int
    waiting: int
    running: int
    kv_usage: float


def ttft_features(load: EndpointLoad) -> tuple[float, ...]:
    """The TTFT feature vector of ``load`` (see the module docstring)."""
    new = max(load.prompt_tokens - load.cached_tokens, 0) / 1e3
    return (
        1.0,
        new,
        new * new,
        load.cached_tokens / 1e3,
        load.inflight_tokens / 1e3,
        load.inflight_requests / 10.0,
        load.waiting / 10.0,
        load.running / 10.0,
        load.kv_usage,
    )


def tpot_features(load: EndpointLoad) -> tuple[float, ...]:
    """The TPOT feature vector of ``load`` (see the module docstring)."""
    return (
        1.0,
        (load.inflight_requests + 1) / 10.0,
        load.running / 10.0,
        load.waiting / 10.0,
        load.kv_usage,
        load.inflight_tokens / 1e3,
    )
