"""LLMInferenceService -> plain Kubernetes manifests, for clusters without KServe.

Names follow KServe's LLMInferenceService controller (pkg/controller/v1alpha2/llmisvc) so
objects line up with what an llm-d install would have created:

===============================  =====================================================
``<n>-kserve``                   model-server Deployment, from ``spec.template`` (the
                                 decode side, with the routing sidecar, under P/D)
``<n>-kserve-prefill``           prefill Deployment, from ``spec.prefill`` (P/D only)
``<n>-kserve-workload-svc``      Service in front of the model servers
``<n>-inference-pool``           InferencePool selecting the model-server pods
``<n>-kserve-router-scheduler``  EPP Deployment running ``kvgate epp`` with the args of
                                 ``spec.router.scheduler`` (templates expanded)
``<n>-epp-service``              Service the gateway's ext_proc filter calls (9002)
``<n>-epp-sa`` / ``-epp-role`` /  ServiceAccount, Role (what kvgate.k8s.access lists) and
``-epp-rolebinding``             binding
``<n>-kserve-route``             HTTPRoute from the Gateway to the InferencePool
===============================  =====================================================

The InferencePool is written in the API group the EPP's ``--pool-group`` names (v1
``inference.networking.k8s.io`` or v1alpha2 ``inference.networking.x-k8s.io``), so the EPP
finds the object it is told to watch.

Leader election is rendered as KServe renders it: ``spec.router.scheduler.replicas`` above 1
adds ``--ha-enable-leader-election`` (unless the args set the flag either way), and then the
Role grants the Lease verbs and the probes ask GIE's ``liveness`` / ``readiness`` services
(the standby is live but not ready), as GIE's chart does with more than one replica.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvgate import __version__
from kvgate.config.llmisvc import LLMInferenceService, child_name, expand_template_args
from kvgate.errors import ConfigError, Problem
from kvgate.k8s import disagg, otel, specfields
from kvgate.k8s import modelserver as ms
from kvgate.k8s.access import epp_api_access
from kvgate.k8s.inferencepool import GROUP_V1, version_for_group

Manifest = dict[str, Any]

#: What ``deploy/image/build.sh`` (``make image``) builds and tags.
DEFAULT_EPP_IMAGE = f"localhost/kvgate:{__version__}"
DEFAULT_MODEL_SERVER_IMAGE = "vllm/vllm-openai:latest"
MODEL_SERVER_PORT = ms.MODEL_SERVER_PORT
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
    tls_secret: str | None = None  # an existing kubernetes.io/tls Secret instead of a new one


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


def workload_labels(svc: LLMInferenceService, role: str = "both") -> dict[str, str]:
    """Labels of the model-server pods: the pool selector plus ``llm-d.ai/role``.

    Without P/D the role (``both``) is part of the selector, as before; with P/D the pool
    and Service select prefill and decode pods alike (:func:`pool_selector`) and the role
    tells the EPP's prefill-filter and decode-filter apart.
    """
    return {**pool_selector(svc), disagg.ROLE_LABEL: role}


def pool_selector(svc: LLMInferenceService) -> dict[str, str]:
    """What the InferencePool and the workload Service select on."""
    labels = {
        "app.kubernetes.io/name": svc.name,
        "app.kubernetes.io/part-of": "llminferenceservice",
        "app.kubernetes.io/component": "llminferenceservice-workload",
        "kserve.io/component": "workload",
    }
    if not disagg.is_disaggregated(svc):
        labels[disagg.ROLE_LABEL] = "both"
    return labels


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


_flag = ms.flag_value


def _str_map(svc: LLMInferenceService, path: str) -> dict[str, str]:
    """The string map at ``path`` (``spec.labels``, ...); {} when unset."""
    value = _get(svc.raw, *path.split("."))
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError([Problem(svc.source, path, "expected a map of strings to strings")])
    return dict(value)


def pod_metadata(svc: LLMInferenceService, path: str, labels: Mapping[str, str]) -> Manifest:
    """A pod template's metadata: ``<path>.labels`` and ``<path>.annotations`` (KServe's
    WorkloadSpec/SchedulerSpec "added to the component pod"), the selector ``labels`` winning."""
    meta: Manifest = {"labels": {**_str_map(svc, f"{path}.labels"), **labels}}
    annotations = _str_map(svc, f"{path}.annotations")
    if annotations:
        meta["annotations"] = annotations
    return meta


def _rolling_update(svc: LLMInferenceService, path: str) -> Manifest | None:
    """``<path>.rolloutStrategy`` as {maxUnavailable, maxSurge} (int or percentage), or None."""
    raw = _get(svc.raw, *path.split("."), "rolloutStrategy")
    if raw is None:
        return None
    where = f"{path}.rolloutStrategy"
    if not isinstance(raw, Mapping):
        raise ConfigError([Problem(svc.source, where, "expected maxUnavailable and/or maxSurge")])
    out: Manifest = {}
    for key in ("maxUnavailable", "maxSurge"):
        value = raw.get(key)
        if value is None:
            continue
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
            isinstance(value, str) and value.endswith("%") and value[:-1].isdigit()
        )
        if not ok:
            problem = Problem(
                svc.source, f"{where}.{key}", f"expected an integer or a percentage, got {value!r}"
            )
            raise ConfigError([problem])
        out[key] = value
    return out


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


def serve_command(
    svc: LLMInferenceService, workload: disagg.Workload | None = None
) -> ms.ServeCommand:
    """The vLLM command the pods of ``workload`` (default: ``spec``) run; see
    kvgate.k8s.modelserver."""
    workload = workload or disagg.workloads(svc)[0]
    pd = disagg.is_disaggregated(svc)
    kvt = disagg.kv_transfer_config(workload, disaggregated=pd)
    names = Names(svc.name)
    model_arg, _, _ = _model_source(svc)
    wiring = ms.kv_events_wiring(svc)
    epp_host = f"{names.epp_service}.{svc.namespace}.svc.cluster.local"
    flags, _, _ = ms.lora_args(svc)
    tracing = otel.tracing_of(svc)
    return ms.ServeCommand(
        model_arg=model_arg,
        served_name=svc.model_name or svc.name,
        scheme=ms.serving_scheme(svc, expand_template_args(svc.scheduler_args, svc)),
        parallel=ms.parallelism(svc),
        kv_events_json=ms.kv_events_config(svc, wiring, epp_host) if wiring else None,
        block_size=wiring.block_size if wiring else None,
        lora_flags=tuple(flags),
        multi_node=_spec(svc).get("worker") is not None,
        port=ms.DECODE_VLLM_PORT if workload.role == "decode" else MODEL_SERVER_PORT,
        kv_transfer_json=disagg.kv_transfer_json(kvt) if kvt else None,
        trace_flags=tuple(otel.vllm_flags(tracing)) if tracing else (),
    )


def _model_pod_spec(
    svc: LLMInferenceService,
    opts: RenderOptions,
    pod: Mapping[str, Any],
    cmd: ms.ServeCommand,
    *,
    worker: bool = False,
    role: str = "both",
) -> dict[str, Any]:
    """A model-server pod spec: the user's template with vLLM's command, mounts and probes
    (and, on a P/D decode pod, the routing sidecar in front of vLLM)."""
    template = copy.deepcopy(dict(pod))
    container = _main_container(template)
    _, volumes, mounts = _model_source(svc)
    _, lora_volumes, lora_mounts = ms.lora_args(svc)
    volumes, mounts = [*volumes, *lora_volumes], [*mounts, *lora_mounts]
    where = "spec.worker" if worker else "spec.template"
    container.setdefault("name", "main")
    container.setdefault("image", opts.model_server_image)
    if "command" not in container and "args" not in container:
        # KServe's preset runs vllm through a shell so VLLM_ADDITIONAL_ARGS splits into flags.
        container["command"] = ["/bin/sh", "-c"]
        container["args"] = [cmd.shell(headless=worker)]
    elif cmd.scheme == "https" and "--ssl-certfile" not in " ".join(
        map(str, [*(container.get("command") or []), *(container.get("args") or [])])
    ):
        raise ConfigError(
            [
                Problem(
                    svc.source,
                    f"{where}.containers[{container['name']}].command",
                    "the service declares HTTPS (probe scheme or --model-server-metrics-scheme) "
                    "but this command has no --ssl-certfile: add vLLM's TLS flags "
                    f"(--ssl-certfile {ms.TLS_MOUNT_PATH}/tls.crt --ssl-keyfile "
                    f"{ms.TLS_MOUNT_PATH}/tls.key) or declare http",
                )
            ]
        )
    ports = list(container.get("ports") or [])
    if not worker and not any(p.get("containerPort") == cmd.port for p in ports):
        name = "http" if cmd.port == MODEL_SERVER_PORT else "vllm"
        ports.append({"name": name, "containerPort": cmd.port, "protocol": "TCP"})
    wiring = ms.kv_events_wiring(svc)
    if wiring is not None and wiring.discover_pods:
        ports.append({"name": "kv-events", "containerPort": wiring.port, "protocol": "TCP"})
    if ports:
        container["ports"] = ports
    pd = role in ("prefill", "decode")
    if cmd.kv_events_json or pd:
        env = [e for e in container.get("env") or [] if e.get("name") != "POD_IP"]
        container["env"] = [ms.pod_ip_env(), *(ms.nixl_env() if pd else []), *env]
    tracing = otel.tracing_of(svc)
    if tracing is not None:
        service = f"{otel.SERVER_SERVICE}-{'prefill' if role == 'prefill' else 'decode'}"
        extra = otel.pod_env(tracing, service, svc)
        container["env"] = otel.merge_env(container.get("env") or [], extra)
    if cmd.scheme == "https":
        secret = opts.tls_secret or ms.tls_secret_name(svc)
        mounts.append({"name": "tls-certs", "mountPath": ms.TLS_MOUNT_PATH, "readOnly": True})
        volumes.append({"name": "tls-certs", "secret": {"secretName": secret}})
    if mounts:
        container["volumeMounts"] = [*(container.get("volumeMounts") or []), *mounts]
    if not worker:  # headless workers serve no HTTP: no probes there
        for key, probe in ms.default_probes(cmd.scheme, cmd.port).items():
            given = container.get(key)
            get = given.get("httpGet") if isinstance(given, Mapping) else None
            if given is None:
                container[key] = probe
            elif isinstance(given, Mapping) and not _PROBE_HANDLERS & given.keys():
                # timings only: KServe's preset supplies the handler (strategic merge)
                container[key] = {**probe, **given}
            elif isinstance(get, Mapping) and "scheme" not in get:
                container[key] = {**given, "httpGet": {**get, "scheme": cmd.scheme.upper()}}
    containers = [c for c in template.get("containers") or [] if c.get("name") != container["name"]]
    template["containers"] = [container, *containers]
    if volumes:
        template["volumes"] = [*(template.get("volumes") or []), *volumes]
    if role == "decode":
        init = [c for c in template.get("initContainers") or [] if c.get("name") != ms.SIDECAR_NAME]
        template["initContainers"] = [ms.routing_sidecar(opts.epp_image), *init]
    return template


def model_server_deployment(
    svc: LLMInferenceService, opts: RenderOptions, workload: disagg.Workload | None = None
) -> Manifest:
    """``<n>-kserve`` (``spec``) or, for the prefill workload, ``<n>-kserve-prefill``."""
    workload = workload or disagg.workloads(svc)[0]
    labels = workload_labels(svc, workload.role)
    cmd = serve_command(svc, workload)
    template = _model_pod_spec(svc, opts, workload.pod, cmd, role=workload.role)
    spec: Manifest = {
        "replicas": workload.replicas,
        "selector": {"matchLabels": dict(labels)},
        "template": {"metadata": pod_metadata(svc, workload.path, labels), "spec": template},
    }
    rolling = _rolling_update(svc, workload.path)
    if rolling is not None:
        spec["strategy"] = {"type": "RollingUpdate", "rollingUpdate": rolling}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(child_name(svc.name, workload.name_suffix), svc, labels),
        "spec": spec,
    }


def worker_labels(svc: LLMInferenceService) -> dict[str, str]:
    """Labels of LeaderWorkerSet workers: outside the pool and Service selectors."""
    return {
        "app.kubernetes.io/name": svc.name,
        "app.kubernetes.io/part-of": "llminferenceservice",
        "app.kubernetes.io/component": "llminferenceservice-workload-worker",
    }


def leader_worker_set(svc: LLMInferenceService, opts: RenderOptions) -> Manifest:
    """``spec.worker``: a LeaderWorkerSet (KServe's ``<name>-kserve-mn``); leaders serve."""
    cmd = serve_command(svc)
    spec = _spec(svc)
    leader = _model_pod_spec(svc, opts, spec.get("template") or {}, cmd)
    worker = _model_pod_spec(svc, opts, spec.get("worker") or {}, cmd, worker=True)
    lws: Manifest = {
        "replicas": svc.replicas,
        "startupPolicy": "LeaderCreated",
        "leaderWorkerTemplate": {
            "size": cmd.parallel.group_size or 1,
            "restartPolicy": "RecreateGroupOnPodRestart",
            "leaderTemplate": {
                "metadata": pod_metadata(svc, "spec", workload_labels(svc)),
                "spec": leader,
            },
            "workerTemplate": {
                "metadata": pod_metadata(svc, "spec", worker_labels(svc)),
                "spec": worker,
            },
        },
    }
    rolling = _rolling_update(svc, "spec")
    if rolling is not None:
        lws["rolloutStrategy"] = {"type": "RollingUpdate", "rollingUpdateConfiguration": rolling}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": _meta(child_name(svc.name, "-kserve-mn"), svc, worker_labels(svc)),
        "spec": lws,
    }


def tls_secret(svc: LLMInferenceService) -> Manifest:
    """KServe's ``<name>-kserve-self-signed-certs``: a self-signed pair for the workload Service.

    KServe's controller generates it; ``kvgate render`` generates it at render time (a new
    key every run -- pass ``--tls-secret NAME`` to reference a Secret you manage instead).
    """
    import base64

    from kvgate.extproc.tls import self_signed

    names = Names(svc.name)
    hosts = (
        names.workload_service,
        f"{names.workload_service}.{svc.namespace}.svc",
        f"{names.workload_service}.{svc.namespace}.svc.cluster.local",
        "localhost",
    )
    cert, key = self_signed(hosts)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": _meta(ms.tls_secret_name(svc), svc, workload_labels(svc)),
        "data": {
            "tls.crt": base64.b64encode(cert).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


def workload_service(svc: LLMInferenceService) -> Manifest:
    labels = pool_selector(svc)
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
    selector = pool_selector(svc)
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


def scheduler_replicas(svc: LLMInferenceService) -> int:
    """``spec.router.scheduler.replicas`` (KServe's SchedulerSpec.Replicas), 1 when unset."""
    replicas = _get(_spec(svc), "router", "scheduler", "replicas")
    if replicas is None:
        return 1
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ConfigError(
            [
                Problem(
                    svc.source,
                    "spec.router.scheduler.replicas",
                    f"expected an integer >= 0, got {replicas!r}",
                )
            ]
        )
    return replicas


_LEADER_ELECTION_FLAG = "--ha-enable-leader-election"


def _leader_election_arg(svc: LLMInferenceService, args: Sequence[str]) -> bool | None:
    """The value ``args`` give ``--ha-enable-leader-election`` (last wins), None if absent.

    Read as ``kvgate epp`` reads it: bare (true), ``=BOOL``, or followed by a BOOL word;
    Go's single-dash spelling too.
    """
    import argparse

    from kvgate.extproc.cli import parse_bool

    value: bool | None = None
    for i, arg in enumerate(args):
        name, eq, text = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name != _LEADER_ELECTION_FLAG.lstrip("-"):
            continue
        if not eq:
            nxt = args[i + 1] if i + 1 < len(args) else ""
            text = nxt if nxt.lower() in _BOOL_WORDS else "true"
        try:
            value = parse_bool(text)
        except argparse.ArgumentTypeError as exc:
            where = "spec.router.scheduler.template.containers[main].args"
            problem = Problem(svc.source, where, f"{_LEADER_ELECTION_FLAG}: {exc}")
            raise ConfigError([problem]) from exc
    return value


_BOOL_WORDS = frozenset({"1", "t", "true", "yes", "on", "0", "f", "false", "no", "off"})


def leader_election(svc: LLMInferenceService) -> bool:
    """Whether the EPP runs active-passive: the args say so, else more than one replica."""
    given = _leader_election_arg(svc, expand_template_args(svc.scheduler_args, svc))
    return given if given is not None else scheduler_replicas(svc) > 1


def epp_args(svc: LLMInferenceService) -> list[str]:
    """The scheduler container's args, templates expanded; pool flags filled in if absent,
    and ``--ha-enable-leader-election`` when more than one replica runs (as KServe adds it)."""
    names = Names(svc.name)
    args = expand_template_args(svc.scheduler_args, svc)
    if _leader_election_arg(svc, args) is None and scheduler_replicas(svc) > 1:
        args.append(_LEADER_ELECTION_FLAG)
    if _flag(args, "--pool-name") is None:
        args += ["--pool-name", names.pool]
    if _flag(args, "--pool-namespace") is None:
        args += ["--pool-namespace", svc.namespace]
    if _flag(args, "--pool-group") is None:
        args += ["--pool-group", GROUP_V1]
    if _flag(args, "--model-server-metrics-scheme") is None:
        # GIE's default is http; state the scheme vLLM serves so the scrapes match it.
        args += ["--model-server-metrics-scheme", ms.serving_scheme(svc, args)]
    if not any(a.startswith(("--config-text", "--config-file")) for a in args):
        _, text = disagg.scheduler_config(svc)  # KServe's P/D default for a P/D service
        args += ["--config-text", text] if text else []
    if otel.tracing_of(svc) is not None and not any(
        a.split("=", 1)[0] in ("--tracing", "-tracing") for a in args
    ):
        args.append("--tracing=true")  # spec.tracing, as KServe adds it
    return args


def _kv_events_port(svc: LLMInferenceService) -> int | None:
    """The port the EPP's precise scorer binds for vLLM's KV events (None: not bound)."""
    wiring = ms.kv_events_wiring(svc)
    return wiring.port if wiring is not None and not wiring.discover_pods else None


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
    kv_port = _kv_events_port(svc)
    if kv_port is not None:
        container["ports"].append(
            {"name": "kv-events", "containerPort": kv_port, "protocol": "TCP"}
        )
    # GIE's chart gives the EPP its namespace and pod name from the downward API.
    env = [e for e in container.get("env") or [] if e.get("name") not in ("NAMESPACE", "POD_NAME")]
    container["env"] = [
        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *env,
    ]
    tracing = otel.tracing_of(svc)
    if tracing is not None:
        extra = otel.pod_env(tracing, otel.SCHEDULER_SERVICE, svc)
        container["env"] = otel.merge_env(container["env"], extra)
    for key, probe in epp_probes(leader_election(svc)).items():
        container.setdefault(key, probe)
    others = [c for c in template.get("containers") or [] if c.get("name") != container["name"]]
    template["containers"] = [container, *others]
    template["serviceAccountName"] = names.epp_service_account
    replicas = scheduler_replicas(svc)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(names.scheduler, svc, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": pod_metadata(svc, "spec.router.scheduler", labels),
                "spec": template,
            },
        },
    }


def epp_probes(leader_election: bool) -> dict[str, Manifest]:
    """GIE chart's EPP probes: gRPC health on 9003; with leader election its ``liveness`` and
    ``readiness`` services (a standby stays live, is not ready), else ``inference-extension``.
    """
    live, ready = ("liveness", "readiness") if leader_election else ("inference-extension",) * 2
    return {
        "livenessProbe": {
            "grpc": {"port": EPP_HEALTH_PORT, "service": live},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
        },
        "readinessProbe": {
            "grpc": {"port": EPP_HEALTH_PORT, "service": ready},
            "periodSeconds": 2,
        },
    }


def epp_service(svc: LLMInferenceService) -> Manifest:
    labels = scheduler_labels(svc)
    kv_port = _kv_events_port(svc)
    kv_ports = (
        [{"name": "kv-events", "port": kv_port, "targetPort": kv_port, "protocol": "TCP"}]
        if kv_port is not None
        else []
    )
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
                *kv_ports,
            ],
        },
    }


def role_rules(*, leader_election: bool) -> list[Manifest]:
    """The Role's rules: kvgate.k8s.access's list, one rule per (resource, verbs) whose
    API groups are merged (the list is the only place the EPP's API use is written)."""
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for access in epp_api_access(leader_election=leader_election):
        groups.setdefault((access.resource, access.verbs), []).append(access.group)
    return [
        {"apiGroups": api_groups, "resources": [resource], "verbs": list(verbs)}
        for (resource, verbs), api_groups in groups.items()
    ]


def rbac(svc: LLMInferenceService) -> list[Manifest]:
    """ServiceAccount + Role + RoleBinding: what the EPP reads, and its Lease when electing."""
    names = Names(svc.name)
    labels = scheduler_labels(svc)
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
            "rules": role_rules(leader_election=leader_election(svc)),
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


def _parent_refs(svc: LLMInferenceService, opts: RenderOptions) -> list[Manifest]:
    """``--gateway``, else ``spec.router.gateway.refs`` (name, namespace, sectionName), else
    KServe's managed Gateway."""
    refs = _get(_spec(svc), "router", "gateway", "refs")
    if opts.gateway_name:
        parents = [
            {"name": opts.gateway_name, "namespace": opts.gateway_namespace or svc.namespace}
        ]
    elif isinstance(refs, list) and refs:
        parents = []
        for i, ref in enumerate(refs):
            if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str):
                where = f"spec.router.gateway.refs[{i}]"
                raise ConfigError([Problem(svc.source, where, "expected a mapping with 'name'")])
            parent = {"name": ref["name"], "namespace": str(ref.get("namespace") or svc.namespace)}
            if ref.get("sectionName"):
                parent["sectionName"] = str(ref["sectionName"])
            parents.append(parent)
    else:
        parents = [dict(DEFAULT_GATEWAY)]
    return [{"group": "gateway.networking.k8s.io", "kind": "Gateway", **p} for p in parents]


def _expand_templates(svc: LLMInferenceService, value: Any, path: str) -> Any:
    """KServe's Go templates in a given spec (``ChildName``, ``.ObjectMeta.Name``/``Namespace``,
    ``.Spec.Model.Name``) expanded; any other ``{{ ... }}`` (``.GlobalConfig``: the KServe
    controller's settings) is one line naming where it is."""
    if isinstance(value, dict):
        return {k: _expand_templates(svc, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_templates(svc, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "{{" not in value:
        return value
    text = expand_template_args([value], svc)[0]
    text = _MODEL_NAME.sub(svc.model_name or svc.name, text)
    if "{{" in text:
        problem = Problem(
            svc.source,
            path,
            f"{value.strip()!r}: only ChildName, .ObjectMeta.Name/.Namespace and "
            ".Spec.Model.Name are expanded (KServe's .GlobalConfig is its controller's "
            "setting): write the value",
        )
        raise ConfigError([problem])
    return text


_PROBE_HANDLERS = frozenset({"httpGet", "grpc", "tcpSocket", "exec"})
_MODEL_NAME = re.compile(r"\{\{\s*\.Spec\.Model\.Name\s*\}\}")


def http_route(svc: LLMInferenceService, opts: RenderOptions) -> Manifest | None:
    """``<n>-kserve-route``; None when ``spec.router.route.http.refs`` names your own routes.

    ``spec.router.route.http.spec`` is the route's spec as given (parentRefs filled in from
    the Gateway when it names none); otherwise KServe's managed route: ``/<ns>/<name>/...``
    rewritten to ``/...`` on the InferencePool.
    """
    names = Names(svc.name)
    http = _get(_spec(svc), "router", "route", "http")
    http = http if isinstance(http, Mapping) else {}
    if http.get("refs"):
        return None
    metadata = _meta(names.route, svc, {"app.kubernetes.io/name": svc.name})
    given = http.get("spec")
    if given is not None:
        if not isinstance(given, Mapping):
            where = "spec.router.route.http.spec"
            raise ConfigError([Problem(svc.source, where, "expected an HTTPRoute spec (mapping)")])
        route_spec = _expand_templates(
            svc, copy.deepcopy(dict(given)), "spec.router.route.http.spec"
        )
        route_spec.setdefault("parentRefs", _parent_refs(svc, opts))
        return {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": metadata,
            "spec": route_spec,
        }
    group = pool_group(svc)
    prefix = f"/{svc.namespace}/{svc.name}"
    backend = {"group": group, "kind": "InferencePool", "name": names.pool}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata,
        "spec": {
            "parentRefs": _parent_refs(svc, opts),
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
    specfields.require_supported(svc, "render")
    ms.check_renderable(svc)
    multi_node = _spec(svc).get("worker") is not None
    https = serve_command(svc).scheme == "https"
    loads = disagg.workloads(svc)
    if len(loads) > 1:
        _check_pd_renderable(svc, multi_node=multi_node, https=https)
        workloads = [model_server_deployment(svc, opts, load) for load in loads]
    elif multi_node:
        workloads = [leader_worker_set(svc, opts)]
    else:
        workloads = [model_server_deployment(svc, opts)]
    route = http_route(svc, opts)
    return [
        *rbac(svc),
        *([tls_secret(svc)] if https and not opts.tls_secret else []),
        *workloads,
        workload_service(svc),
        inference_pool(svc),
        scheduler_deployment(svc, opts),
        epp_service(svc),
        *([route] if route is not None else []),
    ]


def _check_pd_renderable(svc: LLMInferenceService, *, multi_node: bool, https: bool) -> None:
    if multi_node:
        raise ConfigError(
            [
                Problem(
                    svc.source,
                    "spec.worker",
                    "multi-node decode with spec.prefill is not rendered by kvgate; use one "
                    "pod per decode replica (spec.parallelism within a node)",
                )
            ]
        )
    if https:
        raise ConfigError(
            [
                Problem(
                    svc.source,
                    "spec.prefill",
                    "P/D over HTTPS needs the routing sidecar's TLS (--secure-proxy=true), "
                    "which kvgate sidecar does not serve: declare http (probe scheme and "
                    "--model-server-metrics-scheme)",
                )
            ]
        )


def to_yaml(manifests: Sequence[Manifest]) -> str:
    import yaml

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors: kubectl users read this
            return True

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return "---\n".join(
        yaml.dump(m, Dumper=_Dumper, sort_keys=False, default_flow_style=False) for m in manifests
    )
