"""``kvgate render FILE.yaml``: an LLMInferenceService as plain Kubernetes manifests.

Writes multi-document YAML to stdout, for ``kvgate render svc.yaml | kubectl apply -f -``
on clusters without KServe. See docs/kubernetes.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "render",
        help="LLMInferenceService -> Kubernetes manifests (kvgate as the EPP)",
        description="Render an LLMInferenceService into Deployments, Services, an "
        "InferencePool, RBAC and an HTTPRoute, with kvgate epp as the endpoint picker.",
    )
    p.add_argument("file", help="LLMInferenceService YAML/JSON")
    p.add_argument(
        "--epp-image",
        default=None,
        help="image with kvgate (kvgate epp); default localhost/kvgate:<version>, what "
        "deploy/image/build.sh (make image) builds",
    )
    p.add_argument(
        "--tls-secret",
        default=None,
        metavar="NAME",
        help="when vLLM serves HTTPS: mount this existing kubernetes.io/tls Secret instead of "
        "rendering a self-signed <name>-kserve-self-signed-certs",
    )
    p.add_argument(
        "--model-server-image",
        default=None,
        help="model-server image when spec.template gives none (vllm/vllm-openai:latest)",
    )
    p.add_argument(
        "--gateway",
        default=None,
        metavar="NAME[/NAMESPACE]",
        help="Gateway for the HTTPRoute (default: spec.router.gateway.refs, else "
        "kserve/kserve-ingress-gateway)",
    )
    p.add_argument("-o", "--output", default=None, help="write to this file instead of stdout")
    p.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    from kvgate.config import load_llm_inference_service
    from kvgate.k8s.render import (
        DEFAULT_EPP_IMAGE,
        DEFAULT_MODEL_SERVER_IMAGE,
        RenderOptions,
        render,
        to_yaml,
    )

    svc = load_llm_inference_service(args.file)
    gateway_name = gateway_ns = None
    if args.gateway:
        gateway_name, _, gateway_ns = args.gateway.partition("/")
    opts = RenderOptions(
        epp_image=args.epp_image or DEFAULT_EPP_IMAGE,
        model_server_image=args.model_server_image or DEFAULT_MODEL_SERVER_IMAGE,
        gateway_name=gateway_name,
        gateway_namespace=gateway_ns or None,
        tls_secret=args.tls_secret,
    )
    text = to_yaml(render(svc, opts))
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0
