"""The HTTP side of ``kvgate explain``: build the body, call ``/debug/explain``, return JSON."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from kvgate.errors import KvgateError
from kvgate.explain.route import PATH


class ExplainClientError(KvgateError):
    """The front door could not be asked, or said no; the message says which and why."""


def _call(method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> Any:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text.strip() or exc.reason
        raise ExplainClientError(f"{method} {url}: {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        parts = urllib.parse.urlsplit(url)
        raise ExplainClientError(
            f"--url {parts.scheme}://{parts.netloc}: cannot connect ({reason}); is kvgate "
            "serve/up (or kvgate epp's metrics port) there?"
        ) from None


def _headers(args: argparse.Namespace) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ExplainClientError(f"--header {item!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    return headers


def build_body(args: argparse.Namespace, base: str, headers: dict[str, str]) -> bytes:
    """The OpenAI body from --body, or from the prompt (--api, --model, --system)."""
    if args.body is not None:
        try:
            return bytes(args.body.read_bytes())
        except OSError as exc:
            raise ExplainClientError(f"--body {args.body}: cannot read: {exc.strerror}") from None
    if args.prompt is None:
        raise ExplainClientError("give a prompt, --body FILE or --request-id ID")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    model = args.model
    if model is None:
        listing = _call("GET", base + "/v1/models", headers)
        data = listing.get("data") if isinstance(listing, dict) else None
        if not data:
            raise ExplainClientError(f"{base}/v1/models lists no model; give --model")
        model = str(data[0]["id"])
    body: dict[str, Any] = {"model": model}
    if args.api == "chat":
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": prompt})
        body["messages"] = messages
    else:
        body["prompt"] = prompt
    return json.dumps(body).encode()


def fetch_report(args: argparse.Namespace) -> dict[str, Any]:
    base = args.url.rstrip("/")
    headers = _headers(args)
    if args.request_id:
        query = urllib.parse.urlencode({"request_id": args.request_id})
        report = _call("GET", f"{base}{PATH}?{query}", headers)
    else:
        report = _call("POST", base + PATH, headers, build_body(args, base, headers))
    if not isinstance(report, dict):
        raise ExplainClientError(f"{base}{PATH}: expected a JSON object")
    return report
