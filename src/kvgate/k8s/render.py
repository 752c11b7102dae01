"""LLMInferenceService -> plain Kubernetes manifests, for clusters without KServe.

Names follow KServe's LLMInferenceService controller (pkg/controller/v1alpha2/llmisvc) so
objects line up with what an llm-d install would have created:

===============================  =====================================================
``<n>-kserve``                   model-server Deployment, from ``spec.template``
``<n>-kserve-workload-svc``      Service in front of the model servers
``<n>-inference-pool``           InferencePool selecting the model-server pods
``<n>-kserve-router-scheduler``  EPP Deployment running ``kvgate epp`` with the args of
                                 ``spec.router.scheduler`` (templates expanded)
``<n>-epp-service``              Service the gateway's ext_proc filter calls (9002)
``<n>-epp-sa`` / ``-epp-role`` /  ServiceAccount, Role (pods, inferencepools) and binding
``-epp-rolebinding``
``<n>-kserve-route``             HTTPRoute from the Gateway to the InferencePool
===============================  =====================================================

The InferencePool is written in the API group the EPP's ``--pool-group`` names (v1
``inference.networking.k8s.io`` or v1alpha2 ``inference.networking.x-k8s.io``), so the EPP
finds the object it is told to watch.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvgate import __version__
from kvgate.config.llmisvc import LLMInferenceService, child_name, expand_template_args
from kvgate.errors import ConfigError, Problem
from kvgate.k8s.inferencepool import GROUP_V1, GROUP_V1ALPHA2, version_for_group

Manifest = dict[str, Any]

DEFAULT_EPP_IMAGE = f"ghcr.io/kvgate/kvgate:{__version__}"
DEFAULT_MODEL_SERVER_IMAGE = "vllm/vllm-openai:latest"
MODEL_SERVER_PORT = 8000
EPP_GRPC_PORT = 9002
EPP_HEALTH_PORT = 9003
EPP_METRICS_PORT = 9090
#: KServe's managed Gateway when ``spec.router.gateway`` names none.
DEFAULT_GATEWAY = {"name": "kserve-ingress-gateway", "namespace": "kserve"}


@dataclass(frozen=True, slots=True)
class RenderOptions:
    epp_image: str = DEFAULT_EPP_IMAGE
    model_server_image: str = DEFAULT_MODEL_SERVER_IMAGE
    gateway_name: str | None = None
    gateway_namespace: str | None = None


@dataclass(frozen=True, slots=True)
class Names:
    """Every object name, from the service name (KServe's ChildName rule past 63 chars)."""

    service: str

    def _c(self, suffix: str) -> str:
        return child_name(self.service, suffix)

    @property
    def workload(self) -> str:
        return self._c("-kserve")

    @property
    def workload_service(self) -> str:
        return self._c("-kserve-workload-svc")

    @property
    def pool(self) -> str:
        return self._c("-inference-pool")

    @property
    def scheduler(self) -> str:
        return self._c("-kserve-router-scheduler")

    @property
    def epp_service(self) -> str:
        return self._c("-epp-service")

    @property
    def epp_service_account(self) -> str:
        return self._c("-epp-sa")

    @property
    def epp_role(self) -> str:
        return self._c("-epp-role")

    @property
    def epp_role_binding(self) -> str:
        return self._c("-epp-rolebinding")

    @property
    def route(self) -> str:
        return self._c("-kserve-route")


def workload_labels(svc: LLMInferenceService) -> dict[str, str]:
    """Labels of the model-server pods; the InferencePool and Service select on them."""
    return {
        "app.kubernetes.io/name": svc.name,
        "app.kubernetes.io/part-of": "llminferenceservice",
        "app.kubernetes.io/component": "llminferenceservice-workload",
        "kserve.io/component": "workload",
        "llm-d.ai/role": "both",
    }


def scheduler_labels(svc: LLMInferenceService) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": svc.name,
        "app.kubernetes.io/part-of": "llminferenceservice",
        "app.kubernetes.io/component": "llminferenceservice-router-scheduler",
        "kserve.io/component": "router-scheduler",
    }


def _meta(name: str, svc: LLMInferenceService, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": svc.namespace,
        "labels": dict(labels),
    }


def _spec(svc: LLMInferenceService) -> Mapping[str, Any]:
    spec = svc.raw.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _flag(args: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag V`` or ``--flag=V`` in ``args`` (last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _main_container(pod_spec: Mapping[str, Any]) -> dict[str, Any]:
    containers = pod_spec.get("containers") or []
    for c in containers:
        if isinstance(c, Mapping) and c.get("name") == "main":
            return dict(c)
    return dict(containers[0]) if containers and isinstance(containers[0], Mapping) else {}


def _model_source(svc: LLMInferenceService) -> tuple[str, list[Manifest], list[Manifest]]:
    """(model argument for vllm serve, volumes, volumeMounts) from spec.model.uri."""
    uri = svc.model_uri
    if uri.startswith("hf://"):
        return uri[len("hf://") :], [], []
    if uri.startswith("pvc://"):
        claim, _, sub = uri[len("pvc://") :].partition("/")
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "model", "mountPath": "/mnt/models", "readOnly": True}
        return f"/mnt/models/{sub}".rstrip("/"), [volume], [mount]
    raise ConfigError(
        [
            Problem(
                svc.source,
                "spec.model.uri",
                f"kvgate render supports hf:// and pvc:// model URIs, got {uri!r} "
                "(for s3:// or oci:// use KServe, which runs a storage initializer)",
            )
        ]
    )


def model_server_deployment(svc: LLMInferenceService, opts: RenderOptions) -> Manifest:
    names = Names(svc.name)
    labels = workload_labels(svc)
    template = copy.deepcopy(dict(_spec(svc).get("template") or {}))
    container = _main_container(template)
    model_arg, volumes, mounts = _model_source(svc)
    container.setdefault("name", "main")
    container.setdefault("image", opts.model_server_image)
    if "command" not in container and "args" not in container:
        # KServe's preset runs vllm through a shell so VLLM_ADDITIONAL_ARGS splits into flags.
        serve = [
            "vllm",
            "serve",
            model_arg,
            "--port",
            str(MODEL_SERVER_PORT),
            "--served-model-name",
            svc.model_name or svc.name,
        ]
        container["command"] = ["/bin/sh", "-c"]
        container["args"] = [shlex.join(serve) + " ${VLLM_ADDITIONAL_ARGS:-}"]
    ports = list(container.get("ports") or [])
    if not any(p.get("containerPort") == MODEL_SERVER_PORT for p in ports):
        ports.append({"name": "http", "containerPort": MODEL_SERVER_PORT, "protocol": "TCP"})
    container["ports"] = ports
    if mounts:
        container["volumeMounts"] = [*(container.get("volumeMounts") or []), *mounts]
    containers = [c for c in template.get("containers") or [] if c.get("name") != container["name"]]
    template["containers"] = [container, *containers]
    if volumes:
        template["volumes"] = [*(template.get("volumes") or []), *volumes]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(names.workload, svc, labels),
        "spec": {
            "replicas": svc.replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": template},
        },
    }


def workload_service(svc: LLMInferenceService) -> Manifest:
    labels = workload_labels(svc)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(Names(svc.name).workload_service, svc, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(labels),
            "ports": [
                {
                    "name": "http",
                    "port": MODEL_SERVER_PORT,
                    "targetPort": MODEL_SERVER_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }


def pool_group(svc: LLMInferenceService) -> str:
    """The group named by the scheduler's ``--pool-group`` (v1 when absent)."""
    group = _flag(svc.scheduler_args, "--pool-group") or GROUP_V1
    try:
        version_for_group(group)
    except ValueError as exc:
        raise ConfigError([Problem(svc.source, "spec.router.scheduler", str(exc))]) from exc
    return group


def inference_pool(svc: LLMInferenceService) -> Manifest:
    names = Names(svc.name)
    group = pool_group(svc)
    selector = workload_labels(svc)
    spec: dict[str, Any]
    if group == GROUP_V1:
        spec = {
            "selector": {"matchLabels": selector},
            "targetPorts": [{"number": MODEL_SERVER_PORT}],
            "endpointPickerRef": {
                "group": "",
                "kind": "Service",
                "name": names.epp_service,
                "port": {"number": EPP_GRPC_PORT},
                "failureMode": "FailClose",
            },
        }
    else:
        spec = {
            "selector": selector,
            "targetPortNumber": MODEL_SERVER_PORT,
            "extensionRef": {
                "group": "",
                "kind": "Service",
                "name": names.epp_service,
                "portNumber": EPP_GRPC_PORT,
                "failureMode": "FailClose",
            },
        }
    return {
        "apiVersion": f"{group}/{version_for_group(group)}",
        "kind": "InferencePool",
        "metadata": _meta(names.pool, svc, {"app.kubernetes.io/name": svc.name}),
        "spec": spec,
    }


def epp_args(svc: LLMInferenceService) -> list[str]:
    """The scheduler container's args, templates expanded; pool flags filled in if absent."""
    names = Names(svc.name)
    args = expand_template_args(svc.scheduler_args, svc)
    if _flag(args, "--pool-name") is None:
        args += ["--pool-name", names.pool]
    if _flag(args, "--pool-namespace") is None:
        args += ["--pool-namespace", svc.namespace]
    if _flag(args, "--pool-group") is None:
        args += ["--pool-group", GROUP_V1]
    if not any(a.startswith(("--config-text", "--config-file")) for a in args):
        args += ["--config-text", svc.picker_config_text] if svc.picker_config_text else []
    return args


def scheduler_deployment(svc: LLMInferenceService, opts: RenderOptions) -> Manifest:
    names = Names(svc.name)
    labels = scheduler_labels(svc)
    sched = _get(_spec(svc), "router", "scheduler") or {}
    template = copy.deepcopy(dict(_get(sched, "template") or {}))
    container = _main_container(template)
    args = epp_args(svc)
    container.update(
        {
            "name": container.get("name", "main"),
            "image": opts.epp_image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["kvgate", "epp"],
            "args": args,
            "ports": [
                {"name": "grpc", "containerPort": EPP_GRPC_PORT, "protocol": "TCP"},
                {"name": "grpc-health", "containerPort": EPP_HEALTH_PORT, "protocol": "TCP"},
                {"name": "metrics", "containerPort": EPP_METRICS_PORT, "protocol": "TCP"},
            ],
        }
    )
    probe = {"grpc": {"port": EPP_HEALTH_PORT, "service": "inference-extension"}}
    container.setdefault("livenessProbe", {**probe, "initialDelaySeconds": 5, "periodSeconds": 10})
    container.setdefault("readinessProbe", {**probe, "periodSeconds": 2})
    others = [c for c in template.get("containers") or [] if c.get("name") != container["name"]]
    template["containers"] = [container, *others]
    template["serviceAccountName"] = names.epp_service_account
    replicas = sched.get("replicas") if isinstance(sched.get("replicas"), int) else 1
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(names.scheduler, svc, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": template},
        },
    }


def epp_service(svc: LLMInferenceService) -> Manifest:
    labels = scheduler_labels(svc)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(Names(svc.name).epp_service, svc, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(labels),
            "ports": [
                {
                    "name": "grpc",
                    "port": EPP_GRPC_PORT,
                    "targetPort": EPP_GRPC_PORT,
                    "protocol": "TCP",
                    "appProtocol": "http2",
                },
                {
                    "name": "grpc-health",
                    "port": EPP_HEALTH_PORT,
                    "targetPort": EPP_HEALTH_PORT,
                    "protocol": "TCP",
                },
                {
                    "name": "metrics",
                    "port": EPP_METRICS_PORT,
                    "targetPort": EPP_METRICS_PORT,
                    "protocol": "TCP",
                },
            ],
        },
    }


def rbac(svc: LLMInferenceService) -> list[Manifest]:
    """ServiceAccount + Role + RoleBinding: read pods and the pool (both API groups)."""
    names = Names(svc.name)
    labels = scheduler_labels(svc)
    read = ["get", "list", "watch"]
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(names.epp_service_account, svc, labels),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(names.epp_role, svc, labels),
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": read},
                {
                    "apiGroups": [GROUP_V1, GROUP_V1ALPHA2],
                    "resources": [
                        "inferencepools",
                        "inferenceobjectives",
                        "inferencemodels",
                        "inferencemodelrewrites",
                    ],
                    "verbs": read,
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(names.epp_role_binding, svc, labels),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": names.epp_role,
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": names.epp_service_account,
                    "namespace": svc.namespace,
                }
            ],
        },
    ]


def http_route(svc: LLMInferenceService, opts: RenderOptions) -> Manifest:
    names = Names(svc.name)
    refs = _get(_spec(svc), "router", "gateway", "refs")
    if opts.gateway_name:
        parents = [
            {"name": opts.gateway_name, "namespace": opts.gateway_namespace or svc.namespace}
        ]
    elif isinstance(refs, list) and refs:
        parents = [
            {"name": str(r["name"]), "namespace": str(r.get("namespace") or svc.namespace)}
            for r in refs
            if isinstance(r, Mapping) and r.get("name")
        ]
    else:
        parents = [dict(DEFAULT_GATEWAY)]
    for parent in parents:
        parent.update({"group": "gateway.networking.k8s.io", "kind": "Gateway"})
    group = pool_group(svc)
    prefix = f"/{svc.namespace}/{svc.name}"
    backend = {"group": group, "kind": "InferencePool", "name": names.pool}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": _meta(names.route, svc, {"app.kubernetes.io/name": svc.name}),
        "spec": {
            "parentRefs": parents,
            "rules": [
                {
                    # /<ns>/<name>/v1/... -> /v1/... on the pool, as KServe's managed route
                    "matches": [{"path": {"type": "PathPrefix", "value": prefix + "/"}}],
                    "filters": [
                        {
                            "type": "URLRewrite",
                            "urlRewrite": {
                                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}
                            },
                        }
                    ],
                    "backendRefs": [backend],
                    "timeouts": {"request": "0s", "backendRequest": "0s"},
                },
            ],
        },
    }


def render(svc: LLMInferenceService, opts: RenderOptions | None = None) -> list[Manifest]:
    """Every manifest for ``svc``, in an order ``kubectl apply`` is happy with."""
    opts = opts or RenderOptions()
    return [
        *rbac(svc),
        model_server_deployment(svc, opts),
        workload_service(svc),
        inference_pool(svc),
        scheduler_deployment(svc, opts),
        epp_service(svc),
        http_route(svc, opts),
    ]


def to_yaml(manifests: Sequence[Manifest]) -> str:
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return "---\n".join(
        yaml.dump(m, Dumper=_Dumper, sort_keys=False, default_flow_style=False) for m in manifests
    )
