"""The image `kvgate render` names by default runs: ``kvgate --help``, then ``kvgate sim``,
``kvgate serve`` and ``kvgate epp`` each in its own container on the host network, with a
chat completion through the containerised gateway to the containerised simulator and the
containerised EPP ready over the same simulator.

Building the image takes minutes (``make image``, deploy/image/build.sh), so it is not built
here: without the image this test is skipped, and says so. With the image, a machine that
cannot run containers fails with podman's own reason, unless ``KVGATE_NO_CONTAINERS`` states
why containers cannot run there (then the test is skipped with that text).

How the containers are run (:func:`run_flags`, docs/kubernetes.md "Running the image"):
``--ulimit nofile``/``nproc`` at or below this process's own limits, because podman's
defaults (nofile 1048576, nproc above the host's) need CAP_SYS_RESOURCE, which a nested
machine lacks (crun: ``setrlimit `RLIMIT_NOFILE`: Operation not permitted``); runc when it is
installed, because crun 1.8 refuses hybrid cgroup v1/v2 hosts even with
``--cgroups=disabled``; the host network, so the check stays on loopback.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from kvgate.k8s.render import DEFAULT_EPP_IMAGE
from support.procs import free_port, wait_until

pytestmark = pytest.mark.slow
#: A container needs few processes; podman's default asks for more than the host allows.
NPROC = 4096


def run_flags() -> list[str]:
    """``podman run`` flags that start containers where podman's defaults cannot."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    nproc_soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    nproc = NPROC if nproc_soft == resource.RLIM_INFINITY else min(NPROC, nproc_soft)
    flags = ["run", "--rm", "--network=host"]
    flags += ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]
    runtime = os.environ.get("KVGATE_OCI_RUNTIME") or ("runc" if shutil.which("runc") else "")
    return flags + (["--runtime", runtime] if runtime else [])


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
    result = subprocess.run(
        [podman, *run_flags(), *args], capture_output=True, text=True, timeout=120
    )
    # 125-127: podman or its OCI runtime could not start the container (not kvgate's exit)
    if result.returncode in (125, 126, 127):
        reason = os.environ.get("KVGATE_NO_CONTAINERS")
        if reason:
            pytest.skip(f"containers cannot run here: {reason}")
        pytest.fail(f"podman cannot run containers here: {result.stderr.strip()[-500:]}")
    return result


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_image_runs_sim_gateway_and_epp() -> None:
    podman = podman_or_skip()
    result = run_or_explain(podman, [DEFAULT_EPP_IMAGE, "--help"])
    assert result.returncode == 0, result.stderr
    assert "epp" in result.stdout and "render" in result.stdout

    sim_port, gw_port, grpc_port, health_port, metrics_port = (free_port() for _ in range(5))
    sim = f"127.0.0.1:{sim_port}"
    tag = f"kvgate-image-test-{os.getpid()}"
    commands = {
        f"{tag}-sim": ["sim", "--host", "127.0.0.1", "--port", str(sim_port)],
        f"{tag}-gw": ["serve", "--host", "127.0.0.1", "--port", str(gw_port),
                      "--endpoint", f"http://{sim}"],
        f"{tag}-epp": ["epp", "--host", "127.0.0.1", "--endpoint", sim,
                       "--grpc-port", str(grpc_port), "--grpc-health-port", str(health_port),
                       "--metrics-port", str(metrics_port)],
    }  # fmt: skip
    try:
        for name, command in commands.items():
            started = run_or_explain(podman, ["--name", name, "-d", DEFAULT_EPP_IMAGE, *command])
            assert started.returncode == 0, started.stderr

        def logs() -> str:
            return "\n".join(
                subprocess.run(
                    [podman, "logs", name], capture_output=True, text=True, timeout=60
                ).stderr[-1500:]
                for name in commands
            )

        try:  # ready: the gateway and the EPP each have the simulator in rotation
            wait_until(
                lambda: (
                    _status(f"http://127.0.0.1:{gw_port}/ready") == 200
                    and _status(f"http://127.0.0.1:{metrics_port}/healthz") == 200
                ),
                timeout_s=60,
                interval_s=0.2,
                what="the containerised gateway and EPP with the simulator in rotation",
            )
        except TimeoutError as exc:
            raise AssertionError(logs()) from exc
        models = json.load(urllib.request.urlopen(f"http://127.0.0.1:{gw_port}/v1/models"))
        model = models["data"][0]["id"]
        body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{gw_port}/v1/chat/completions",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.load(resp)
        assert answer["choices"][0]["message"]["content"], answer
        assert answer["usage"]["completion_tokens"] > 0, answer
    finally:
        for name in commands:
            subprocess.run([podman, "rm", "-f", name], capture_output=True, timeout=60)
