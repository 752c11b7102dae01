"""``kvgate`` command line: parses arguments and calls one function per subcommand.

Each area registers its own subcommands in a small ``cli`` module (``kvgate/<area>/cli.py``
with ``register(subparsers)``), imported here without importing the area's heavy modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kvgate import __version__
from kvgate.errors import ConfigError, EngineError, KvgateError

#: Modules with a ``register(subparsers)`` function, in the order ``kvgate --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "kvgate.up.cli",  # up
    "kvgate.gateway.cli",  # serve
    "kvgate.sim.cli",  # sim
    "kvgate.extproc.cli",  # epp
    "kvgate.sidecar.cli",  # sidecar (P/D)
    "kvgate.k8s.cli",  # render
    "kvgate.bench.cli",  # bench
    "kvgate.config.cli",  # config check
    "kvgate.explain.cli",  # explain
    "kvgate.engines.cli",  # model prepare, engine
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvgate",
        description="Cache-aware LLM inference gateway (llm-d's endpoint picker in Python).",
    )
    parser.add_argument("--version", action="version", version=f"kvgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except (EngineError, KvgateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
