"""``kvgate config``: check a scheduler configuration, list and show the built-in policies.

kvgate config check FILE          resolved profiles, plugins, parameters, weights (exit 1 on error)
kvgate config check --policy NAME the same for a built-in policy
kvgate config check --strict FILE also every difference from llm-d (exit 1 if any)
kvgate config policies            the built-in policy names
kvgate config show-policy NAME    a policy's EndpointPickerConfig YAML
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "config",
        help="check scheduler configs (EndpointPickerConfig / LLMInferenceService), list policies",
        description="Check llm-d scheduler configurations and show kvgate's built-in policies.",
    )
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")

    check = sub.add_parser(
        "check",
        help="validate a config file and print the resolved profiles, plugins and weights",
        description=(
            "Validate an EndpointPickerConfig or LLMInferenceService (YAML or JSON) and print "
            "what the scheduler will run: profiles, plugins with their parameters (defaults "
            "applied), weights, the profile handler and each profile's picker. On error, one "
            "line per problem (file:line:col: field path: what was expected) and exit code 1."
        ),
    )
    check.add_argument("file", nargs="?", help="EndpointPickerConfig or LLMInferenceService file")
    check.add_argument("--policy", help="check a built-in policy instead of a file")
    check.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    check.add_argument(
        "--strict",
        action="store_true",
        help="also list every way kvgate runs the config differently from llm-d "
        "(exit 1 if there is any)",
    )
    check.set_defaults(func=_check)

    policies = sub.add_parser("policies", help="list the built-in routing policies")
    policies.set_defaults(func=_policies)

    show = sub.add_parser("show-policy", help="print a built-in policy's EndpointPickerConfig")
    show.add_argument("name", help="policy name (see `kvgate config policies`)")
    show.set_defaults(func=_show_policy)

    parser.set_defaults(func=lambda args: _help(parser))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _check(args: argparse.Namespace) -> int:
    from kvgate.config.report import config_as_dict, render_config

    if (args.file is None) == (args.policy is None):
        print("error: give exactly one of FILE or --policy NAME", file=sys.stderr)
        return 2
    config, header = _load(args)
    for warning in config.warnings:
        print(f"warning: {config.source}: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(config_as_dict(config), indent=2))
    else:
        print(header)
        print(render_config(config), end="")
    if not args.strict:
        return 0
    from kvgate.config.strict import strict_differences

    differences = strict_differences(config)
    if not differences:
        print(f"strict: {config.source}: kvgate runs this config as llm-d would")
        return 0
    print(f"strict: {config.source}: {len(differences)} difference(s) from llm-d:")
    for line in differences:
        print(f"  {line}")
    return 1


def _load(args: argparse.Namespace) -> tuple[Any, str]:
    from kvgate.config.documents import kind_of, read_document
    from kvgate.config.llmisvc import KIND, llm_inference_service_from_document
    from kvgate.config.loader import load_picker_config, picker_config_from_data

    if args.policy is not None:
        from kvgate.config.policies import POLICY_NAMES, policy_config_text

        if args.policy not in POLICY_NAMES:
            from kvgate.errors import ConfigError, Problem

            raise ConfigError(
                [
                    Problem(
                        "--policy",
                        "",
                        f"unknown policy {args.policy!r} (known: {', '.join(POLICY_NAMES)})",
                    )
                ]
            )
        config = load_picker_config(
            text=policy_config_text(args.policy), source_name=f"<policy {args.policy}>"
        )
        return config, f"policy {args.policy}: ok"
    from pathlib import Path

    doc = read_document(args.file)
    if kind_of(doc.data) == KIND:
        svc = llm_inference_service_from_document(doc, base_dir=Path(args.file).parent)
        header = (
            f"{args.file}: ok (LLMInferenceService {svc.namespace}/{svc.name}, model "
            f"{svc.model_name}, {svc.replicas} replica(s), scheduler config from "
            f"{svc.picker_config_origin})"
        )
        return svc.require_picker_config(), header
    config = picker_config_from_data(doc.data, source=doc.source, text=doc.text, locate=doc.locate)
    return config, f"{args.file}: ok (EndpointPickerConfig {config.api_version})"


def _policies(args: argparse.Namespace) -> int:
    from kvgate.config.policies import POLICY_NAMES, policy_summary

    width = max(len(n) for n in POLICY_NAMES)
    for name in POLICY_NAMES:
        print(f"{name:<{width}}  {policy_summary(name)}")
    return 0


def _show_policy(args: argparse.Namespace) -> int:
    from kvgate.config.policies import POLICY_NAMES, policy_config_text

    if args.name not in POLICY_NAMES:
        print(
            f"error: unknown policy {args.name!r} (known: {', '.join(POLICY_NAMES)})",
            file=sys.stderr,
        )
        return 1
    print(policy_config_text(args.name), end="")
    return 0
