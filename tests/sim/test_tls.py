"""``kvgate sim`` over HTTPS with vLLM's flags, and the gateway scraping and forwarding to it.

The certificate is a self-signed pair (the kind ``kvgate render`` puts in KServe's Secret);
the gateway trusts it through ``SSL_CERT_FILE`` (OpenSSL's default verify paths), so its
upstream client and its scraper verify the simulator's certificate as they would a real
one.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgate.extproc.tls import self_signed
from support.procs import Proc, free_port, kvgate_cmd, wait_until
from support.sim import start_sim


def write_pair(directory: Path, name: str = "tls") -> tuple[Path, Path]:
    cert, key = self_signed(("localhost",))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.crt").write_bytes(cert)
    (directory / f"{name}.key").write_bytes(key)
    return directory / f"{name}.crt", directory / f"{name}.key"


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def get(url: str, ctx: ssl.SSLContext | None = None, body: object = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30, context=ctx) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def start_https_sim(spawn: Callable[..., Proc], cert: Path, key: Path, *extra: str) -> str:
    sim = start_sim(
        spawn, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), *extra,
        "--speed", "50", model="m", wait=False, lora_modules=["sql-lora=/adapters/sql"],
    )  # fmt: skip
    url = f"https://127.0.0.1:{sim.port}"
    wait_until(lambda: get(url + "/health", trusting(cert))[0] == 200, timeout_s=30, what=url)
    return url


def test_sim_serves_https_and_the_gateway_scrapes_and_forwards_to_it(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    cert, key = write_pair(tmp_path)
    url = start_https_sim(spawn, cert, key)
    status, body = get(url + "/v1/models", trusting(cert))
    assert status == 200
    assert {m["id"] for m in json.loads(body)["data"]} == {"m", "sql-lora"}
    with pytest.raises(urllib.error.URLError):  # the certificate is not trusted by default
        get(url + "/health")
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is refused
        get(url.replace("https://", "http://") + "/health")

    port = free_port()
    gateway = spawn(
        kvgate_cmd("serve", "--port", str(port), "--endpoint", url, "--seed", "1"),
        name="gw",
        env={"SSL_CERT_FILE": str(cert)},
    )
    base = f"http://127.0.0.1:{port}"
    # /ready is 200 once the endpoint is in rotation: its first scrape over HTTPS succeeded
    # (/health is the gateway's own liveness, 200 from the start)
    gateway.wait_http(base + "/ready", timeout_s=30)
    for model in ("m", "sql-lora"):
        status, body = get(
            base + "/v1/completions", body={"model": model, "prompt": "hi", "max_tokens": 3}
        )
        assert status == 200, body
        assert json.loads(body)["model"] == model
    _, page = get(url + "/metrics", trusting(cert))
    assert b'vllm:request_success_total{engine="0",finished_reason="length"' in page


def test_enable_ssl_refresh_serves_a_replaced_certificate(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    cert, key = write_pair(tmp_path / "live")
    old_pem = cert.read_text()
    url = start_https_sim(spawn, cert, key, "--enable-ssl-refresh")
    new_cert, new_key = write_pair(tmp_path / "next")
    # as the kubelet updates a Secret volume: the new files appear in place
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    new_pem = cert.read_text()
    assert new_pem != old_pem

    def served() -> str:
        return ssl.get_server_certificate(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5)

    wait_until(lambda: served().strip() == new_pem.strip(), timeout_s=15, what="new certificate")
    assert get(url + "/health", trusting(cert))[0] == 200


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ssl-keyfile", "k.pem"], "--ssl-keyfile: needs --ssl-certfile"),
        (["--enable-ssl-refresh"], "--enable-ssl-refresh: needs --ssl-certfile"),
        (["--ssl-certfile", "/no/such.crt"], "--ssl-certfile: no such file '/no/such.crt'"),
    ],
)
def test_tls_flags_that_cannot_act_stop_start_up(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvgate", "sim", "--port", str(free_port()), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert message in result.stderr.strip().splitlines()[-1]
