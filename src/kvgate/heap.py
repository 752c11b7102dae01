"""The garbage collector's view of a long-running front door.

A full (generation 2) collection walks every tracked object. Without help, that is every
module, class, function and config object made at start-up, tens of thousands of them, on
every full collection for the life of the process: with 4,500 client connections held, the
gateway's full collections paused its loop for 35–83 ms each, six times in 30 s, and those
pauses were the abuse benchmark's p99 (docs/RELIABILITY.md). :func:`freeze_startup_heap`
moves what start-up allocated into the collector's permanent generation (``gc.freeze``), so
later collections walk only what requests and connections allocate. Objects frozen are never
collected; start-up garbage is collected first.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect start-up's garbage, then freeze what is left (call once serving starts)."""
    gc.collect()
    gc.freeze()
