"""The image `kvgate render` names by default runs: ``kvgate --help`` and ``kvgate epp``
answering /healthz on loopback, with podman.

Building it takes minutes (``make image``, deploy/image/build.sh), so it is not built here:
without the image this test is skipped, and says so. With the image, a machine that cannot
run containers fails with podman's own reason, unless ``KVGATE_NO_CONTAINERS`` states why
containers cannot run there (then the test is skipped with that text).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from kvgate.k8s.render import DEFAULT_EPP_IMAGE
from support.procs import free_port

pytestmark = pytest.mark.slow
#: Flags that let podman run where cgroup controllers cannot be delegated (hybrid v1/v2
#: hosts, nested containers): no cgroup, host network for the loopback check.
RUN = ["run", "--rm", "--cgroups=disabled", "--network=host"]


def podman_or_skip() -> str:
    podman = shutil.which("podman")
    present = (
        podman
        and subprocess.run(
            [podman, "image", "exists", DEFAULT_EPP_IMAGE], capture_output=True, timeout=60
        ).returncode
        == 0
    )
    if not podman or not present:
        pytest.skip(f"image {DEFAULT_EPP_IMAGE} not built here: run `make image` to test it")
    assert podman is not None
    return podman


def run_or_explain(podman: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([podman, *RUN, *args], capture_output=True, text=True, timeout=120)
    # 125-127: podman or its OCI runtime could not start the container (not kvgate's exit)
    if result.returncode in (125, 126, 127):
        reason = os.environ.get("KVGATE_NO_CONTAINERS")
        if reason:
            pytest.skip(f"containers cannot run here: {reason}")
        pytest.fail(f"podman cannot run containers here: {result.stderr.strip()[-500:]}")
    return result


def test_image_runs_kvgate_and_the_epp_answers_healthz() -> None:
    podman = podman_or_skip()
    result = run_or_explain(podman, [DEFAULT_EPP_IMAGE, "--help"])
    assert result.returncode == 0, result.stderr
    assert "epp" in result.stdout and "render" in result.stdout

    grpc_port, health_port, metrics_port, model_port = (free_port() for _ in range(4))
    name = f"kvgate-image-test-{os.getpid()}"
    argv = [podman, *RUN, "--name", name, "-d", DEFAULT_EPP_IMAGE, "epp",
            "--host", "127.0.0.1", "--endpoint", f"127.0.0.1:{model_port}",
            "--grpc-port", str(grpc_port), "--grpc-health-port", str(health_port),
            "--metrics-port", str(metrics_port)]  # fmt: skip
    started = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{metrics_port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as resp:
                    status = resp.status
                    break
            except urllib.error.HTTPError as exc:  # 503: up, no ready endpoint (none runs)
                status = exc.code
                break
            except OSError:
                time.sleep(0.2)
        assert status in (200, 503), subprocess.run(
            [podman, "logs", name], capture_output=True, text=True, timeout=60
        ).stderr[-2000:]
    finally:
        subprocess.run([podman, "rm", "-f", name], capture_output=True, timeout=60)
