"""``kvgate explain``: ask a running front door why it would route a prompt where it would.

Light to import: the HTTP call and the rendering load in the command's function.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "explain",
        help="show each endpoint's cached prefix, every scorer's score and the pick for a prompt",
        description="Score a prompt (or a logged request) with a running gateway's scheduler "
        "without routing it (POST /debug/explain: no PreRequest hook runs, no index learns), "
        "then print per endpoint the prefix it holds (approximate and precise), each scorer's "
        "score and the pick.",
    )
    p.add_argument("prompt", nargs="?", help="the prompt text; '-' reads it from stdin")
    p.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="the gateway (kvgate serve/up), or kvgate epp's metrics port (default: %(default)s)",
    )
    p.add_argument("--model", help="model name (default: the first of GET /v1/models)")
    p.add_argument(
        "--api",
        choices=("chat", "completions"),
        default="chat",
        help="send the prompt as one user message (chat) or as a completions prompt",
    )
    p.add_argument("--system", help="chat only: a system message before the prompt")
    p.add_argument(
        "--body", type=Path, metavar="FILE", help="a whole OpenAI request body (JSON) to explain"
    )
    p.add_argument(
        "--request-id",
        help="explain a request the front door served recently (its logged scores, and now)",
    )
    p.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a request header (e.g. x-session-token), repeatable",
    )
    p.add_argument("--api-key", help="Authorization: Bearer key, when the gateway wants one")
    p.add_argument("--json", action="store_true", help="print the raw JSON report")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from kvgate.explain.client import ExplainClientError, fetch_report
    from kvgate.explain.render import render

    try:
        report = fetch_report(args)
    except ExplainClientError as exc:
        import sys

        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        import json

        print(json.dumps(report, indent=2))
        return 0
    render(report)
    return 0
