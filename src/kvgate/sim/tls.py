"""HTTPS for ``kvgate sim``, with vLLM's flags: ``--ssl-certfile``, ``--ssl-keyfile``,
``--ssl-ca-certs``, ``--ssl-cert-reqs`` and ``--enable-ssl-refresh``.

vLLM hands the first four to uvicorn, which builds one server ``SSLContext`` from them;
``--enable-ssl-refresh`` reloads the certificate chain (and CA certificates) into that same
context when the files change, so new handshakes get the new certificate and open
connections keep theirs (KServe renders it because its controller rotates the Secret).
kvgate does the same, polling the files' modification times every ``poll_s`` instead of
vLLM's watchfiles.

Under TLS the listener is asyncio's own (``loop.create_server(ssl=...)``), not
kvgate.sim.wire's stamped transport: TTFT counts from the handler's start, as it does
where the kernel gives no stamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from dataclasses import dataclass

__all__ = ["CertRefresher", "TlsSettings", "server_context", "tls_from_flags"]

log = logging.getLogger("kvgate.sim.tls")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """What the TLS flags asked for; ``certfile`` is always set (it turns HTTPS on)."""

    certfile: str
    keyfile: str | None = None  # None: the key is in certfile (as uvicorn allows)
    ca_certs: str | None = None
    cert_reqs: int = int(ssl.CERT_NONE)  # 0 none, 1 optional, 2 required (uvicorn's values)
    refresh: bool = False  # --enable-ssl-refresh


def tls_from_flags(
    certfile: str | None,
    keyfile: str | None,
    ca_certs: str | None,
    cert_reqs: int,
    refresh: bool,
) -> TlsSettings | None:
    """The settings, or None for plain HTTP; ValueError naming the flag for anything a
    server could not act on (a TLS flag without ``--ssl-certfile``, a missing file)."""
    if certfile is None:
        given = [
            flag
            for flag, value in (
                ("--ssl-keyfile", keyfile),
                ("--ssl-ca-certs", ca_certs),
                ("--enable-ssl-refresh", refresh or None),
            )
            if value is not None
        ]
        if given:
            raise ValueError(f"{given[0]}: needs --ssl-certfile (HTTPS is off without it)")
        return None
    for flag, path in (
        ("--ssl-certfile", certfile),
        ("--ssl-keyfile", keyfile),
        ("--ssl-ca-certs", ca_certs),
    ):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{flag}: no such file {path!r}")
    if cert_reqs not in (ssl.CERT_NONE, ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED):
        raise ValueError(f"--ssl-cert-reqs: expected 0, 1 or 2 (ssl.CERT_*), got {cert_reqs}")
    if cert_reqs != ssl.CERT_NONE and ca_certs is None:
        raise ValueError("--ssl-cert-reqs: verifying clients needs --ssl-ca-certs")
    tls = TlsSettings(certfile, keyfile, ca_certs, cert_reqs, refresh)
    server_context(tls)  # a pair that does not load fails here, naming the files
    return tls


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server context as uvicorn builds it from the same flags."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load(ctx, tls)
    ctx.verify_mode = ssl.VerifyMode(tls.cert_reqs)
    return ctx


def _load(ctx: ssl.SSLContext, tls: TlsSettings) -> None:
    try:
        ctx.load_cert_chain(tls.certfile, tls.keyfile)
        if tls.ca_certs is not None:
            ctx.load_verify_locations(tls.ca_certs)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"--ssl-certfile/--ssl-keyfile: cannot load {tls.certfile!r}"
            f"{f' with {tls.keyfile!r}' if tls.keyfile else ''}: {exc}"
        ) from exc


class CertRefresher:
    """``--enable-ssl-refresh``: reload ``tls``'s files into ``ctx`` when they change.

    A reload that fails (a half-written file) is logged and retried at the next poll;
    the context keeps the pair it had.
    """

    def __init__(self, ctx: ssl.SSLContext, tls: TlsSettings, *, poll_s: float = 1.0) -> None:
        self.ctx = ctx
        self.tls = tls
        self.poll_s = poll_s
        self.reloads = 0
        self._seen = self._stamps()
        self._task: asyncio.Task[None] | None = None

    def _stamps(self) -> tuple[float, ...]:
        paths = (self.tls.certfile, self.tls.keyfile, self.tls.ca_certs)
        out = []
        for path in paths:
            try:
                out.append(os.stat(path).st_mtime if path else 0.0)
            except OSError:
                out.append(-1.0)
        return tuple(out)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ssl refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            stamps = self._stamps()
            if stamps == self._seen:
                continue
            try:
                _load(self.ctx, self.tls)
            except ValueError as exc:
                log.warning("SSL refresh: %s; keeping the previous certificate", exc)
                continue
            self._seen = stamps
            self.reloads += 1
            log.info("SSL refresh: reloaded %s", self.tls.certfile)
