"""Start a real ``kvgate sim`` replica for a test and wait for it to be healthy.

    def test_x(spawn):
        sim = start_sim(spawn, "--speed", "50", model="m")
        openai.OpenAI(base_url=sim.base_url, api_key="x")...

Extra positional arguments are passed to ``kvgate sim`` unchanged; keyword arguments become
flags (``max_num_seqs=4`` -> ``--max-num-seqs 4``; True -> a bare flag; lists repeat values).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from support.procs import Proc, free_port, kvgate_cmd


@dataclass(frozen=True)
class SimHandle:
    url: str  # http://127.0.0.1:PORT
    base_url: str  # http://127.0.0.1:PORT/v1 (for the openai client)
    port: int
    host: str
    proc: Proc
    model: str


def sim_args(
    *extra_args: str, model: str = "sim-model", port: int, host: str = "127.0.0.1", **kw: Any
) -> list[str]:
    args = ["sim", "--host", host, "--port", str(port), "--model", model]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, list | tuple):
            args.append(flag)
            args.extend(str(v) for v in value)
        else:
            args.extend([flag, str(value)])
    args.extend(extra_args)
    return args


def start_sim(
    spawn: Callable[..., Proc],
    *extra_args: str,
    model: str = "sim-model",
    timeout_s: float = 30.0,
    env: dict[str, str] | None = None,
    name: str = "sim",
    wait: bool = True,
    **kw: Any,
) -> SimHandle:
    """Start ``kvgate sim`` on a free port and wait (up to ``timeout_s``) for GET /health."""
    host = kw.pop("host", "127.0.0.1")
    port = int(kw.pop("port", 0)) or free_port()
    proc = spawn(
        kvgate_cmd(*sim_args(*extra_args, model=model, port=port, host=host, **kw)),
        name=name,
        env=env,
    )
    url = f"http://{host}:{port}"
    if wait:
        proc.wait_http(url + "/health", timeout_s=timeout_s)
    return SimHandle(url=url, base_url=url + "/v1", port=port, host=host, proc=proc, model=model)
