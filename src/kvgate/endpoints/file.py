"""Endpoints from a watched file (``--endpoints-file``), added and removed at run time.

The file is YAML or JSON: a list whose items are URLs or mappings::

    - http://127.0.0.1:8001
    - url: http://127.0.0.1:8002
      name: replica-b            # optional, default host:port
      labels: {llm-d.ai/role: decode}

or a mapping with that list under ``endpoints``. The watcher polls the file's modification
time and size; on a change it re-reads the file and makes the pool equal to the static
endpoints plus the file's. A file that fails to parse is reported once and the pool is left
as it was, so a half-written file never empties the pool. Requests already forwarded to a
removed endpoint finish normally: they hold the endpoint object, not its pool entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kvgate.endpoints.pool import EndpointPool, EndpointSpec
from kvgate.endpoints.static import EndpointURLError, spec_from_url

log = logging.getLogger("kvgate.endpoints")


class EndpointsFileError(ValueError):
    """The endpoints file is malformed; the message names the file and the item."""


def load_endpoints_file(path: str | Path) -> list[EndpointSpec]:
    """Parse an endpoints file into specs; raises EndpointsFileError naming the bad item."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise EndpointsFileError(f"{p}: cannot read: {exc.strerror}") from exc
    try:
        data: Any = yaml.safe_load(text) if text.strip() else []
    except yaml.YAMLError as exc:
        raise EndpointsFileError(f"{p}: not valid YAML/JSON: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("endpoints", [])
    if data is None:
        data = []
    if not isinstance(data, list):
        raise EndpointsFileError(f"{p}: expected a list of endpoint URLs or mappings")
    specs: list[EndpointSpec] = []
    for i, item in enumerate(data):
        try:
            if isinstance(item, str):
                specs.append(spec_from_url(item))
            elif isinstance(item, dict) and isinstance(item.get("url"), str):
                labels = item.get("labels") or {}
                if not isinstance(labels, dict):
                    raise EndpointURLError("labels: expected a mapping")
                name = item.get("name")
                specs.append(
                    spec_from_url(
                        item["url"],
                        name=str(name) if name is not None else None,
                        labels={str(k): str(v) for k, v in labels.items()},
                    )
                )
            else:
                raise EndpointURLError("expected a URL string or a mapping with 'url'")
        except EndpointURLError as exc:
            raise EndpointsFileError(f"{p}: [{i}]: {exc}") from exc
    return specs


class EndpointsFileWatcher:
    """Keeps the pool equal to ``static`` + the file's endpoints; polls every ``interval_s``."""

    def __init__(
        self,
        pool: EndpointPool,
        path: str | Path,
        static: Sequence[EndpointSpec] = (),
        interval_s: float = 0.5,
    ) -> None:
        self.pool = pool
        self.path = Path(path)
        self.static = list(static)
        self.interval_s = interval_s
        self._stamp: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        self.last_error: str | None = None

    def load_now(self) -> None:
        """Read the file and apply it; raises EndpointsFileError (used at start-up)."""
        self._stamp = self._file_stamp()
        specs = load_endpoints_file(self.path)
        self._apply(specs)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _apply(self, specs: list[EndpointSpec]) -> None:
        merged = {s.name: s for s in self.static}
        for spec in specs:
            merged.setdefault(spec.name, spec)
        before = {e.name for e in self.pool.all()}
        self.pool.set_endpoints(merged.values())
        after = set(merged)
        added, removed = sorted(after - before), sorted(before - after)
        if added or removed:
            log.info(
                "endpoints file %s: added %s, removed %s",
                self.path,
                ", ".join(added) or "none",
                ", ".join(removed) or "none",
            )
        self.reloads += 1

    def poll(self) -> bool:
        """Re-read the file if it changed; returns True when the pool was updated."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:
            msg = f"{self.path}: file is missing; keeping the current endpoints"
            if msg != self.last_error:
                log.warning(msg)
            self.last_error = msg
            return False
        try:
            specs = load_endpoints_file(self.path)
        except EndpointsFileError as exc:
            if str(exc) != self.last_error:
                log.warning("%s; keeping the current endpoints", exc)
            self.last_error = str(exc)
            return False
        self.last_error = None
        self._apply(specs)
        return True

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="endpoints-file")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.poll()


__all__ = ["EndpointsFileError", "EndpointsFileWatcher", "load_endpoints_file"]
