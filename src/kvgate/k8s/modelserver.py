"""The model-server side of ``kvgate render``: vLLM's command line, probes, TLS, KV events.

What is rendered follows KServe's LLMInferenceService presets (config/llmisvcconfig in
kserve/kserve: ``config-llm-template.yaml``, ``config-llm-worker-data-parallel.yaml``) so a
service moved between KServe and ``kvgate render`` keeps its behaviour. Invariants:

* **One scheme.** vLLM serves HTTPS exactly when the service asks for it -- the scheduler's
  ``--model-server-metrics-scheme https`` or an ``httpGet`` probe with ``scheme: HTTPS`` on
  the model-server container -- and then every probe, the EPP's metrics scrapes and vLLM's
  ``--ssl-certfile``/``--ssl-keyfile`` (KServe's ``/var/run/kserve/tls`` mount of the
  ``<name>-kserve-self-signed-certs`` Secret) agree. Contradicting declarations fail with
  one line naming both places.
* **KV events reach the EPP.** With a ``precise-prefix-cache-scorer`` in the scheduler
  config, vLLM gets ``--kv-events-config`` publishing to the EPP Service on the port the
  scorer binds (llm-d's one-collector pattern), with the topic ``kv@<pod-ip>:<port>@<model>``
  built by the kubelet from the downward API (``$(POD_IP)``): kvgate keys endpoints by
  ``host:port``, so the port is part of the topic.
* **Nothing dropped.** ``spec.model.lora`` becomes ``--enable-lora --lora-modules``;
  ``spec.parallelism`` becomes vLLM's parallel flags; ``spec.worker`` a LeaderWorkerSet
  (vLLM's native multi-node data parallelism); what cannot be rendered (multi-node
  pipeline parallelism, P/D over HTTPS) fails with one line saying why.
* **P/D as KServe lays it out.** With ``spec.prefill`` the decode pods run vLLM on
  :data:`DECODE_VLLM_PORT` (8001) behind llm-d's routing sidecar on 8000 (here
  ``kvgate sidecar`` with pd-sidecar's flags, a native sidecar: an init container with
  ``restartPolicy: Always``), so the pool's target port reaches the sidecar; prefill pods run
  vLLM on 8000. Both get ``--kv-transfer-config`` (NIXL, plus the OffloadingConnector under
  vLLM's MultiConnector when the workload sets ``kvCacheOffloading``) and NIXL's side channel
  on the pod IP (``VLLM_NIXL_SIDE_CHANNEL_HOST``/``_PORT``, as llm-d's P/D guide).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvgate.config.llmisvc import LLMInferenceService, child_name
from kvgate.errors import ConfigError, Problem

MODEL_SERVER_PORT = 8000
#: KServe's decode preset: vLLM listens here, the routing sidecar on MODEL_SERVER_PORT.
DECODE_VLLM_PORT = 8001
#: llm-d's P/D guide: NIXL's side channel port (vLLM's default) on the pod IP.
NIXL_SIDE_CHANNEL_PORT = 5600
SIDECAR_NAME = "llm-d-routing-sidecar"
#: KServe's mount of the workload certificate (config-llm-template.yaml).
TLS_MOUNT_PATH = "/var/run/kserve/tls"
TLS_SECRET_SUFFIX = "-kserve-self-signed-certs"
HEALTH_PATH = "/health"
#: The precise scorer's default SUB bind (llm-d's kvEventsConfig.zmqEndpoint).
DEFAULT_KV_EVENTS_PORT = 5557
PRECISE_SCORER = "precise-prefix-cache-scorer"
#: LeaderWorkerSet's environment in every pod of a group (leaderworkerset.x-k8s.io docs).
LWS_LEADER_ADDRESS = "$(LWS_LEADER_ADDRESS)"
DEFAULT_DATA_RPC_PORT = 5555  # KServe's preset default for --data-parallel-rpc-port

_MAIN = "spec.template.containers[main]"


def _fail(svc: LLMInferenceService, path: str, message: str) -> ConfigError:
    return ConfigError([Problem(svc.source, path, message)])


def _spec(svc: LLMInferenceService) -> Mapping[str, Any]:
    spec = svc.raw.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag V`` or ``--flag=V`` in ``args`` (last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


# ---- parallelism -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parallelism:
    """``spec.parallelism`` (KServe's ParallelismSpec); None fields were not given."""

    tensor: int | None = None
    pipeline: int | None = None
    data: int | None = None
    data_local: int | None = None
    data_rpc_port: int | None = None
    expert: bool = False

    @property
    def is_data_parallel(self) -> bool:
        return bool(self.data) or bool(self.data_local)

    @property
    def group_size(self) -> int | None:
        """Pods per LeaderWorkerSet group, as KServe's ``ParallelismSpec.GetSize``."""
        if self.is_data_parallel:
            return max(max(self.data or 1, 1) // max(self.data_local or 1, 1), 1)
        return self.pipeline or None


def parallelism(svc: LLMInferenceService) -> Parallelism:
    raw = _spec(svc).get("parallelism")
    if raw is None:
        return Parallelism()
    if not isinstance(raw, Mapping):
        raise _fail(svc, "spec.parallelism", "expected a mapping")
    known = {"tensor", "pipeline", "data", "dataLocal", "dataRPCPort", "expert"}
    for key in raw:
        if key not in known:
            raise _fail(svc, f"spec.parallelism.{key}", f"unknown field (known: {sorted(known)})")
    ints: dict[str, int | None] = {}
    for key in ("tensor", "pipeline", "data", "dataLocal", "dataRPCPort"):
        value = raw.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise _fail(svc, f"spec.parallelism.{key}", f"expected an integer >= 1, got {value!r}")
        ints[key] = value
    expert = raw.get("expert", False)
    if not isinstance(expert, bool):
        raise _fail(svc, "spec.parallelism.expert", f"expected true or false, got {expert!r}")
    return Parallelism(
        tensor=ints["tensor"],
        pipeline=ints["pipeline"],
        data=ints["data"],
        data_local=ints["dataLocal"],
        data_rpc_port=ints["dataRPCPort"],
        expert=expert,
    )


def check_renderable(svc: LLMInferenceService) -> None:
    """Fail with one line for the parts of the spec ``kvgate render`` does not render."""
    spec = _spec(svc)
    par = parallelism(svc)
    worker = spec.get("worker")
    if worker is not None:
        if not isinstance(worker, Mapping):
            raise _fail(svc, "spec.worker", "expected a pod spec (mapping)")
        if not par.is_data_parallel:
            raise _fail(
                svc,
                "spec.worker",
                "multi-node rendering needs spec.parallelism.data (vLLM's native multi-node "
                "data parallelism); multi-node tensor/pipeline parallelism runs on Ray, which "
                "kvgate render does not set up",
            )
    if par.is_data_parallel and worker is None and (par.group_size or 1) > 1:
        raise _fail(
            svc,
            "spec.parallelism.data",
            f"data {par.data} over dataLocal {par.data_local or 1} spans "
            f"{par.group_size} pods: add spec.worker (the worker pod spec) or set dataLocal "
            "equal to data",
        )


# ---- scheme ------------------------------------------------------------------------------


def _probe_schemes(svc: LLMInferenceService) -> list[tuple[str, str]]:
    out = []
    for key, probe in (
        ("livenessProbe", svc.liveness_probe),
        ("readinessProbe", svc.readiness_probe),
        ("startupProbe", svc.startup_probe),
    ):
        get = probe.get("httpGet") if isinstance(probe, Mapping) else None
        if isinstance(get, Mapping) and get.get("scheme"):
            out.append((f"{_MAIN}.{key}.httpGet.scheme", str(get["scheme"]).lower()))
    return out


def serving_scheme(svc: LLMInferenceService, epp_args: Sequence[str]) -> str:
    """``https`` or ``http``: what vLLM serves, the probes use and the EPP scrapes."""
    declared = _probe_schemes(svc)
    metrics = flag_value(epp_args, "--model-server-metrics-scheme")
    if metrics is not None:
        declared.append(("spec.router.scheduler: --model-server-metrics-scheme", metrics.lower()))
    schemes = {scheme for _, scheme in declared}
    for place, scheme in declared:
        if scheme not in ("http", "https"):
            raise _fail(svc, place, f"expected http or https, got {scheme!r}")
    if len(schemes) > 1:
        where = ", ".join(f"{place} = {scheme}" for place, scheme in declared)
        raise _fail(
            svc,
            declared[0][0],
            f"the model server's scheme is declared both ways ({where}): vLLM serves one "
            "scheme, so the probes and the EPP's --model-server-metrics-scheme must agree",
        )
    return schemes.pop() if schemes else "http"


# ---- KV events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KvEventsWiring:
    """How vLLM publishes to the precise scorer: connect to the EPP, or bind for discovery."""

    port: int  # the EPP's SUB port (connect mode) or each pod's PUB port (discoverPods)
    discover_pods: bool
    block_size: int | None  # the scorer's tokenProcessorConfig.blockSize, when given


def kv_events_wiring(svc: LLMInferenceService) -> KvEventsWiring | None:
    config = svc.picker_config
    for spec in config.plugins if config is not None else ():
        if spec.canonical_type != PRECISE_SCORER:
            continue
        params = spec.parameters or {}
        events = params.get("kvEventsConfig") or {}
        token = params.get("tokenProcessorConfig") or {}
        block = token.get("blockSize") if isinstance(token, Mapping) else None
        block_size = block if isinstance(block, int) and block > 0 else None
        if not isinstance(events, Mapping):
            events = {}
        if events.get("publishers"):
            return None  # the user lists each publisher's address: their vLLM flags, not ours
        if events.get("discoverPods"):
            disc = events.get("podDiscoveryConfig") or {}
            port = disc.get("socketPort", 5556) if isinstance(disc, Mapping) else 5556
            return KvEventsWiring(int(port), True, block_size)
        endpoint = str(events.get("zmqEndpoint") or f"tcp://*:{DEFAULT_KV_EVENTS_PORT}")
        port_text = endpoint.rsplit(":", 1)[-1]
        if not endpoint.startswith("tcp://") or not port_text.isdigit():
            raise _fail(
                svc,
                f"{PRECISE_SCORER}.parameters.kvEventsConfig.zmqEndpoint",
                f"expected tcp://*:<port> for a rendered EPP, got {endpoint!r}",
            )
        return KvEventsWiring(int(port_text), False, block_size)
    return None


def kv_events_config(svc: LLMInferenceService, wiring: KvEventsWiring, epp_host: str) -> str:
    """vLLM's ``--kv-events-config`` JSON; ``$(POD_IP)`` is expanded by the kubelet."""
    topic = f"kv@$(POD_IP):{MODEL_SERVER_PORT}@{svc.model_name or svc.name}"
    endpoint = (
        f"tcp://*:{wiring.port}" if wiring.discover_pods else f"tcp://{epp_host}:{wiring.port}"
    )
    return json.dumps(
        {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": endpoint,
            "topic": topic,
        },
        separators=(",", ":"),
    )


# ---- LoRA --------------------------------------------------------------------------------


def lora_args(svc: LLMInferenceService) -> tuple[list[str], list[dict[str, Any]], list[Any]]:
    """(vLLM flags, volumes, mounts) for ``spec.model.lora.adapters``.

    ``hf://org/repo`` is given to vLLM as the Hub id (vLLM downloads it);
    ``pvc://claim/path`` is mounted read-only under ``/mnt/lora/<name>``.
    """
    if not svc.lora_adapters:
        return [], [], []
    modules: list[str] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[Any] = []
    for i, adapter in enumerate(svc.lora_adapters):
        uri = adapter.uri
        if uri.startswith("hf://"):
            path = uri[len("hf://") :]
        elif uri.startswith("pvc://"):
            claim, _, sub = uri[len("pvc://") :].partition("/")
            volume = f"lora-{i}"
            volumes.append(
                {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            )
            path = f"/mnt/lora/{adapter.name}"
            mount: dict[str, Any] = {"name": volume, "mountPath": path, "readOnly": True}
            if sub:
                mount["subPath"] = sub
            mounts.append(mount)
        else:
            raise _fail(
                svc,
                f"spec.model.lora.adapters[{i}].uri",
                f"kvgate render supports hf:// and pvc:// adapter URIs, got {uri!r}",
            )
        modules.append(f"{adapter.name}={path}")
    return ["--enable-lora", "--lora-modules", *modules, *lora_limits(svc)], volumes, mounts


#: spec.model.lora's limits and vLLM's flags for them (KServe adds each only when set).
LORA_LIMIT_FLAGS = (
    ("maxRank", "--max-lora-rank"),
    ("maxAdapters", "--max-loras"),
    ("maxCpuAdapters", "--max-cpu-loras"),
)


def lora_limits(svc: LLMInferenceService, only: Sequence[str] = ()) -> list[str]:
    """``--max-lora-rank=N``/``--max-loras=N``/``--max-cpu-loras=N`` from ``spec.model.lora``
    (``only``: just these flags, for an engine that knows fewer)."""
    model = _spec(svc).get("model")
    lora = model.get("lora") if isinstance(model, Mapping) else None
    if not isinstance(lora, Mapping):
        return []
    flags: list[str] = []
    for key, flag in LORA_LIMIT_FLAGS:
        value = lora.get(key)
        if value is None or (only and flag not in only):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(svc, f"spec.model.lora.{key}", f"expected an integer >= 1, got {value!r}")
        flags.append(f"{flag}={value}")
    return flags


# ---- the vLLM command --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServeCommand:
    """Everything the default vLLM command line needs, decided once for leader and workers."""

    model_arg: str
    served_name: str
    scheme: str
    parallel: Parallelism
    kv_events_json: str | None
    block_size: int | None
    lora_flags: tuple[str, ...]
    multi_node: bool
    port: int = MODEL_SERVER_PORT  # DECODE_VLLM_PORT behind the routing sidecar
    kv_transfer_json: str | None = None  # --kv-transfer-config (NIXL and/or offloading)
    trace_flags: tuple[str, ...] = ()  # spec.tracing: --otlp-traces-endpoint ...

    def shell(self, *, headless: bool = False) -> str:
        """The ``/bin/sh -c`` script: ``vllm serve`` then ``$VLLM_ADDITIONAL_ARGS`` split."""
        args = [
            "vllm",
            "serve",
            self.model_arg,
            "--port",
            str(self.port),
            "--served-model-name",
            self.served_name,
        ]
        if self.scheme == "https":
            args += [
                "--enable-ssl-refresh",
                "--ssl-certfile",
                f"{TLS_MOUNT_PATH}/tls.crt",
                "--ssl-keyfile",
                f"{TLS_MOUNT_PATH}/tls.key",
            ]
        par = self.parallel
        if par.tensor:
            args += ["--tensor-parallel-size", str(par.tensor)]
        if par.pipeline:
            args += ["--pipeline-parallel-size", str(par.pipeline)]
        if par.expert:
            args += ["--enable-expert-parallel"]
        if par.is_data_parallel:
            args += [
                "--data-parallel-size",
                str(par.data or par.data_local or 1),
                "--data-parallel-size-local",
                str(par.data_local or par.data or 1),
            ]
            if self.multi_node:
                args += [
                    "--data-parallel-address",
                    LWS_LEADER_ADDRESS,
                    "--data-parallel-rpc-port",
                    str(par.data_rpc_port or DEFAULT_DATA_RPC_PORT),
                ]
        if headless:
            args.append("--headless")
        if self.block_size:
            args += ["--block-size", str(self.block_size)]
        if self.kv_events_json:
            args += ["--kv-events-config", self.kv_events_json]
        if self.kv_transfer_json:
            args += ["--kv-transfer-config", self.kv_transfer_json]
        args += [*self.lora_flags, *self.trace_flags]
        script = shlex.join(args)
        if self.multi_node and par.is_data_parallel:
            # LWS numbers the pods of a group 0..size-1 (leader 0): each runs dataLocal ranks.
            local = par.data_local or 1
            script += f" --data-parallel-start-rank $((${{LWS_WORKER_INDEX:-0}} * {local}))"
        # $(VAR) in the JSON is the kubelet's expansion, done before the shell runs; the
        # shell then splits VLLM_ADDITIONAL_ARGS into flags as KServe's preset does.
        return script + " ${VLLM_ADDITIONAL_ARGS:-}"


def http_probe(scheme: str, port: int = MODEL_SERVER_PORT, **timing: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": HEALTH_PATH, "port": port, "scheme": scheme.upper()},
        **timing,
    }


def default_probes(scheme: str, port: int = MODEL_SERVER_PORT) -> dict[str, dict[str, Any]]:
    """KServe's preset probes (config-llm-template.yaml) in the chosen scheme."""
    return {
        "startupProbe": http_probe(scheme, port, failureThreshold=60, periodSeconds=10),
        "livenessProbe": http_probe(
            scheme, port, periodSeconds=10, timeoutSeconds=1, failureThreshold=10
        ),
        "readinessProbe": http_probe(
            scheme, port, periodSeconds=1, timeoutSeconds=1, failureThreshold=2
        ),
    }


def nixl_env() -> list[dict[str, Any]]:
    """NIXL's side channel on the pod IP (``$(POD_IP)`` is the kubelet's expansion)."""
    return [
        {"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "value": "$(POD_IP)"},
        {"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": str(NIXL_SIDE_CHANNEL_PORT)},
    ]


def routing_sidecar(image: str) -> dict[str, Any]:
    """llm-d's routing sidecar before a decode vLLM, as KServe's decode preset places it,
    running ``kvgate sidecar`` with the pd-sidecar flags it implements (plain HTTP)."""
    return {
        "name": SIDECAR_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",  # a native sidecar: up before vLLM, stopped after it
        "command": ["kvgate", "sidecar"],
        "args": [
            f"--port={MODEL_SERVER_PORT}",
            f"--model-server-port={DECODE_VLLM_PORT}",
            "--kv-connector=nixlv2",
            "--secure-proxy=false",
        ],
        "ports": [{"name": "http", "containerPort": MODEL_SERVER_PORT, "protocol": "TCP"}],
        "livenessProbe": http_probe("http", periodSeconds=10, timeoutSeconds=10),
        "readinessProbe": http_probe("http", periodSeconds=2, timeoutSeconds=5),
    }


def tls_secret_name(svc: LLMInferenceService) -> str:
    return child_name(svc.name, TLS_SECRET_SUFFIX)


def pod_ip_env() -> dict[str, Any]:
    return {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
