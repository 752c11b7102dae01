"""The garbage collector's view of a long-running front door.

A full (generation 2) collection walks every tracked object. Without help, that is every
module, class, function and config object made at start-up, tens of thousands of them, on
every full collection for the life of the process: with 4,500 client connections held, the
gateway's full collections paused its loop for 35–83 ms each, six times in 30 s, and those
pauses were the abuse benchmark's p99 (docs/RELIABILITY.md). :func:`freeze_startup_heap`
moves what start-up allocated into the collector's permanent generation (``gc.freeze``), so
later collections walk only what requests and connections allocate. Objects frozen are never
collected; start-up garbage is collected first.

Freezing also shrinks the count a full collection waits for (CPython runs one once the objects
that reached the oldest generation since the last grow by a quarter), so with thousands of
connections opening and closing it came every few seconds; ``FULL_EVERY`` (the third
threshold: first-generation collections between full ones, 10 by default) spaces them out.
Request-path objects die by reference counting (kvgate.http1 breaks its connections' one
cycle), so what waits longer for a full collection is little.
"""

from __future__ import annotations

import gc

#: First-generation collections between two full ones (CPython's default is 10).
FULL_EVERY = 100


def freeze_startup_heap() -> None:
    """Collect start-up's garbage, freeze what is left and space out full collections (call
    once serving starts)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_EVERY)
