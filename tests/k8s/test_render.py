"""``kvgate render``: manifests validate against the kinds' schemas and are wired together."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kvgate.config import load_llm_inference_service
from kvgate.k8s.access import epp_api_access
from kvgate.k8s.inferencepool import parse_pool
from kvgate.k8s.render import RenderOptions, render

SCHEMAS = Path(__file__).parent.parent / "data" / "k8s-schemas"
SEED = Path(str(resources.files("kvgate") / "data" / "examples" / "llm-inference-service.yaml"))
SCHEMA_FOR = {
    ("apps/v1", "Deployment"): "deployment.apps-v1.json",
    ("v1", "Service"): "service.v1.json",
    ("v1", "ServiceAccount"): "serviceaccount.v1.json",
    ("rbac.authorization.k8s.io/v1", "Role"): "role.rbac-v1.json",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebinding.rbac-v1.json",
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepool.v1.json",
    ("inference.networking.x-k8s.io/v1alpha2", "InferencePool"): "inferencepool.v1alpha2.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute.v1.json",
}


#: Kubernetes' own kinds, checked against its published OpenAPI schemas as well (offline,
#: kubernetes-validate, strict: unknown fields fail as with ``kubectl apply --validate=strict``).
BUILT_IN_GROUPS = ("v1", "apps/v1", "rbac.authorization.k8s.io/v1")
K8S_VERSION = "1.33.0"


def validate(manifest: dict[str, Any]) -> None:
    key = (manifest["apiVersion"], manifest["kind"])
    if manifest["apiVersion"] in BUILT_IN_GROUPS:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    if key not in SCHEMA_FOR:
        assert manifest["apiVersion"] in BUILT_IN_GROUPS, f"no schema for {key}"
        return
    schema = json.loads((SCHEMAS / SCHEMA_FOR[key]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(manifest)


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for m in manifests:
        out.setdefault(m["kind"], []).append(m)
    return out


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_cli_renders_the_seed_service_as_valid_manifests() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kvgate", "render", str(SEED)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    manifests = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == sorted(
        ["ServiceAccount", "Role", "RoleBinding", "Secret", "Deployment", "Service",
         "InferencePool", "Deployment", "Service", "HTTPRoute"]
    )  # fmt: skip
    for manifest in manifests:
        validate(manifest)
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    for expected in [
        ("Deployment", "qwen-model-kserve"),
        ("Service", "qwen-model-kserve-workload-svc"),
        ("InferencePool", "qwen-model-inference-pool"),
        ("Deployment", "qwen-model-kserve-router-scheduler"),
        ("Service", "qwen-model-epp-service"),
        ("HTTPRoute", "qwen-model-kserve-route"),
    ]:
        assert expected in names
    assert all(m["metadata"]["namespace"] == "my-llmd-deployment" for m in manifests)


def test_wiring_selectors_ports_and_epp_args() -> None:
    svc = load_llm_inference_service(SEED)
    manifests = render(svc, RenderOptions(epp_image="example.com/kvgate:test"))
    kinds = by_kind(manifests)
    deployments = {d["metadata"]["name"]: d for d in kinds["Deployment"]}
    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    workload = deployments["qwen-model-kserve"]
    epp = deployments["qwen-model-kserve-router-scheduler"]
    (pool,) = kinds["InferencePool"]
    (route,) = kinds["HTTPRoute"]

    # Deployments select their own pod template labels
    for d in deployments.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    epp_labels = epp["spec"]["template"]["metadata"]["labels"]

    # the seed's --pool-group is v1alpha2: the pool is written in that group, and kvgate's own
    # discovery code reads it back with the model servers' labels and port
    assert pool["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
    spec = parse_pool(pool)
    assert dict(spec.selector).items() <= pod_labels.items()
    container_ports = {
        p["containerPort"] for p in workload["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert set(spec.target_ports) <= container_ports

    # services select the right pods, and the EPP service port is the pool's picker port
    assert (
        services["qwen-model-kserve-workload-svc"]["spec"]["selector"].items() <= pod_labels.items()
    )
    epp_svc = services["qwen-model-epp-service"]
    assert epp_svc["spec"]["selector"].items() <= epp_labels.items()
    assert pool["spec"]["extensionRef"]["name"] == "qwen-model-epp-service"
    epp_port = pool["spec"]["extensionRef"]["portNumber"]
    svc_ports = {p["port"]: p["targetPort"] for p in epp_svc["spec"]["ports"]}
    epp_container = epp["spec"]["template"]["spec"]["containers"][0]
    epp_container_ports = {p["containerPort"] for p in epp_container["ports"]}
    assert epp_port in svc_ports and svc_ports[epp_port] in epp_container_ports

    # the EPP runs kvgate epp with the seed's args, templates expanded, pointing at this pool
    assert epp_container["command"] == ["kvgate", "epp"]
    assert epp_container["image"] == "example.com/kvgate:test"
    args = epp_container["args"]
    assert flag(args, "--pool-name") == pool["metadata"]["name"]
    assert flag(args, "--pool-namespace") == pool["metadata"]["namespace"]
    assert flag(args, "--pool-group") == "inference.networking.x-k8s.io"
    assert int(flag(args, "--grpc-port")) == svc_ports[epp_port]
    assert int(flag(args, "--grpc-health-port")) == epp_container["readinessProbe"]["grpc"]["port"]
    assert "kind: EndpointPickerConfig" in flag(args, "--config-text")
    assert not any("{{" in a for a in args)
    env = {e["name"]: e.get("value") for e in epp_container["env"]}
    assert env["HF_HOME"] == "/tmp/tokenizer-cache"
    assert {v["name"] for v in epp["spec"]["template"]["spec"]["volumes"]} == {
        "tokenizer-cache",
        "cachi2-cache",
    }

    # RBAC: the EPP's service account may watch pods and read the pool
    (sa,) = kinds["ServiceAccount"]
    (role,) = kinds["Role"]
    (binding,) = kinds["RoleBinding"]
    assert epp["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    # every call the EPP's code declares (one replica: no Lease), and nothing more
    needed = {
        (a.group, a.resource, verb)
        for a in epp_api_access(leader_election=False)
        for verb in a.verbs
    }
    assert granted == needed
    assert ("llm-d.ai", "inferenceobjectives", "watch") in granted
    assert not any(r == "leases" for _, r, _ in granted)

    # the model server keeps the template's probes, resources, tolerations and env
    main = workload["spec"]["template"]["spec"]["containers"][0]
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert workload["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert any(e["name"] == "VLLM_ADDITIONAL_ARGS" for e in main["env"])
    assert "Qwen/Qwen3-0.6B" in main["args"][0]

    # the route sends the service's path prefix to the pool, through a Gateway
    backend = route["spec"]["rules"][0]["backendRefs"][0]
    assert (backend["kind"], backend["name"]) == ("InferencePool", pool["metadata"]["name"])
    assert backend["group"] == "inference.networking.x-k8s.io"
    assert route["spec"]["parentRefs"][0]["kind"] == "Gateway"


def test_v1_pool_when_args_name_the_v1_group(tmp_path: Path) -> None:
    text = SEED.read_text().replace(
        "- inference.networking.x-k8s.io\n", "- inference.networking.k8s.io\n", 1
    )
    path = tmp_path / "svc.yaml"
    path.write_text(text)
    manifests = render(
        load_llm_inference_service(path),
        RenderOptions(gateway_name="gw", gateway_namespace="infra"),
    )
    for m in manifests:
        validate(m)
    (pool,) = by_kind(manifests)["InferencePool"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["endpointPickerRef"]["port"] == {"number": 9002}
    assert parse_pool(pool).target_ports == (8000,)
    (route,) = by_kind(manifests)["HTTPRoute"]
    assert route["spec"]["parentRefs"][0]["name"] == "gw"


def test_schemas_reject_what_a_cluster_would() -> None:
    svc = load_llm_inference_service(SEED)
    manifests = render(svc)
    pool = next(m for m in manifests if m["kind"] == "InferencePool")
    broken = json.loads(json.dumps(pool))
    del broken["spec"]["targetPortNumber"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    deployment = json.loads(json.dumps(next(m for m in manifests if m["kind"] == "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"][
        "scheme"
    ] = "GRPC"
    with pytest.raises(jsonschema.ValidationError):
        validate(deployment)
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    with pytest.raises(jsonschema.ValidationError):
        validate(deployment)


def test_unsupported_model_uri_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(SEED.read_text().replace("uri: hf://Qwen/Qwen3-0.6B", "uri: s3://bucket/qwen"))
    result = subprocess.run(
        [sys.executable, "-m", "kvgate", "render", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "spec.model.uri" in result.stderr and "s3://" in result.stderr


def service(tmp_path: Path, extra_spec: str, text: str | None = None) -> Path:
    """The seed with ``extra_spec`` (YAML indented two spaces) appended under ``spec``."""
    path = tmp_path / "svc.yaml"
    path.write_text((text or SEED.read_text()).rstrip("\n") + "\n" + extra_spec)
    return path


def test_multi_node_data_parallel_renders_a_leader_worker_set(tmp_path: Path) -> None:
    path = service(
        tmp_path,
        "  parallelism: {data: 8, dataLocal: 4, tensor: 1}\n"
        "  worker:\n    containers: [{name: main}]\n",
    )
    manifests = render(load_llm_inference_service(path))
    (lws,) = by_kind(manifests)["LeaderWorkerSet"]
    schema = json.loads((SCHEMAS / "leaderworkerset.v1.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(lws)
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2  # data 8 / dataLocal 4, as KServe's ParallelismSpec.GetSize
    for role in ("leaderTemplate", "workerTemplate"):  # pod templates pass Kubernetes' schema
        validate({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": template[role]}})  # fmt: skip
    leader = template["leaderTemplate"]["spec"]["containers"][0]["args"][0]
    worker = template["workerTemplate"]["spec"]["containers"][0]["args"][0]
    for script in (leader, worker):
        assert "--data-parallel-size 8 --data-parallel-size-local 4" in script
        assert "--data-parallel-address '$(LWS_LEADER_ADDRESS)'" in script
        assert "--data-parallel-start-rank $((${LWS_WORKER_INDEX:-0} * 4))" in script
    assert "--headless" in worker and "--headless" not in leader
    # the pool and the Service select leaders only; no Deployment for the model server
    (pool,) = by_kind(manifests)["InferencePool"]
    leader_labels = template["leaderTemplate"]["metadata"]["labels"]
    assert parse_pool(pool).selector.items() <= leader_labels.items()
    assert (
        not parse_pool(pool).selector.items()
        <= template["workerTemplate"]["metadata"]["labels"].items()
    )
    assert [d["metadata"]["name"] for d in by_kind(manifests)["Deployment"]] == [
        "qwen-model-kserve-router-scheduler"
    ]


def test_seed_schemes_agree_and_tls_is_mounted() -> None:
    manifests = render(load_llm_inference_service(SEED))
    workload = next(m for m in manifests if m["metadata"]["name"] == "qwen-model-kserve")
    epp = next(
        m for m in manifests if m["metadata"]["name"] == "qwen-model-kserve-router-scheduler"
    )
    main = workload["spec"]["template"]["spec"]["containers"][0]
    for key in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[key]["httpGet"]["scheme"] == "HTTPS"
    assert "--ssl-certfile /var/run/kserve/tls/tls.crt" in main["args"][0]
    epp_args = epp["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(epp_args, "--model-server-metrics-scheme") == "https"
    (secret,) = by_kind(manifests)["Secret"]
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls-certs"]["secret"]["secretName"] == secret["metadata"]["name"]
    # --tls-secret: the user's Secret, none rendered
    own = render(load_llm_inference_service(SEED), RenderOptions(tls_secret="mine"))
    assert "Secret" not in by_kind(own)


@pytest.mark.parametrize(
    ("extra", "replace", "message"),
    [
        # the seed serves HTTPS; kvgate sidecar serves plain HTTP only
        ("  prefill: {replicas: 1}\n", None, "spec.prefill: P/D over HTTPS needs"),
        (
            "  worker: {containers: [{name: main}]}\n",
            None,
            "spec.worker: multi-node rendering needs",
        ),
        ("", ("scheme: HTTPS", "scheme: HTTP"), "declared both ways"),
    ],
)
def test_what_cannot_be_rendered_is_one_line(
    tmp_path: Path, extra: str, replace: tuple[str, str] | None, message: str
) -> None:
    text = SEED.read_text().replace(*replace) if replace else None
    result = subprocess.run(
        [sys.executable, "-m", "kvgate", "render", str(service(tmp_path, extra, text))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert message in line


def test_lora_adapters_become_vllm_flags(tmp_path: Path) -> None:
    text = SEED.read_text().replace(
        "    name: Qwen/Qwen3-0.6B\n",
        "    name: Qwen/Qwen3-0.6B\n    lora:\n      adapters:\n"
        "      - {name: sql, uri: hf://org/sql-lora}\n"
        "      - {name: docs, uri: pvc://adapters/docs}\n",
    )
    path = tmp_path / "svc.yaml"
    path.write_text(text)
    manifests = render(load_llm_inference_service(path))
    workload = next(m for m in manifests if m["metadata"]["name"] == "qwen-model-kserve")
    main = workload["spec"]["template"]["spec"]["containers"][0]
    assert "--enable-lora --lora-modules sql=org/sql-lora docs=/mnt/lora/docs" in main["args"][0]
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts["/mnt/lora/docs"]["subPath"] == "docs"
    validate(workload)


def seed_with_scheduler(tmp_path: Path, replicas: str, *extra_args: str) -> Path:
    """The seed with ``spec.router.scheduler.replicas`` and args appended to the EPP's."""
    text = SEED.read_text().replace(
        "    scheduler:\n      template:\n", f"    scheduler:\n      replicas: {replicas}\n"
        "      template:\n", 1,
    )  # fmt: skip
    for arg in extra_args:
        text = text.replace(
            "            args:\n", f"            args:\n              - '{arg}'\n", 1
        )
    path = tmp_path / "svc.yaml"
    path.write_text(text)
    return path


def granted_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


@pytest.mark.parametrize(
    ("replicas", "extra_args", "elects", "flag_added"),
    [
        ("2", (), True, True),  # KServe adds the flag above one replica
        ("2", ("--ha-enable-leader-election=false",), False, False),  # active-active, as asked
        ("1", ("--ha-enable-leader-election",), True, False),
        ("1", (), False, False),
    ],
)
def test_scheduler_replicas_render_leader_election_lease_rbac_and_probes(
    tmp_path: Path, replicas: str, extra_args: tuple[str, ...], elects: bool, flag_added: bool
) -> None:
    path = seed_with_scheduler(tmp_path, replicas, *extra_args)
    manifests = render(load_llm_inference_service(path))
    for m in manifests:
        validate(m)
    kinds = by_kind(manifests)
    epp = next(d for d in kinds["Deployment"] if d["metadata"]["name"].endswith("-scheduler"))
    assert epp["spec"]["replicas"] == int(replicas)
    (container,) = epp["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args.count("--ha-enable-leader-election") == (1 if elects else 0)
    assert (args[-1] == "--ha-enable-leader-election") == flag_added
    (role,) = kinds["Role"]
    needed = {
        (a.group, a.resource, verb)
        for a in epp_api_access(leader_election=elects)
        for verb in a.verbs
    }
    assert granted_of(role) == needed
    lease_verbs = {v for g, r, v in needed if (g, r) == ("coordination.k8s.io", "leases")}
    assert lease_verbs == ({"get", "create", "update"} if elects else set())
    # GIE's chart: liveness/readiness services with leader election, inference-extension without
    live = container["livenessProbe"]["grpc"]
    ready = container["readinessProbe"]["grpc"]
    names = ("liveness", "readiness") if elects else ("inference-extension",) * 2
    assert (live["service"], ready["service"]) == names
    assert live["port"] == ready["port"] == int(flag(args, "--grpc-health-port"))


@pytest.mark.parametrize("replicas", ["-1", "two", "true"])
def test_scheduler_replicas_not_a_count_is_one_line(tmp_path: Path, replicas: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvgate", "render", str(seed_with_scheduler(tmp_path, replicas))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert "spec.router.scheduler.replicas: expected an integer >= 0" in line
