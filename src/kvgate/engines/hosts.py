"""What the host offers replicas: CPU cores, GPUs, free ports, and engine argument merging."""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence


def available_cpus() -> tuple[int, ...]:
    """The CPU cores this process may run on, in order."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return tuple(range(os.cpu_count() or 1))


def cpu_slices(num_replicas: int, cpus: Sequence[int]) -> list[tuple[int, ...]]:
    """Give each replica its own cores: an equal share, or one core each wrapping around.

    With 2 cores and 2 replicas: ``[(0,), (1,)]``; 8 cores and 2 replicas: ``[(0..3), (4..7)]``;
    2 cores and 3 replicas: ``[(0,), (1,), (0,)]`` (the third shares core 0).
    """
    if not cpus:
        raise ValueError("no CPU cores to place replicas on")
    per = max(1, len(cpus) // max(1, num_replicas))
    if per == 1:
        return [(cpus[i % len(cpus)],) for i in range(num_replicas)]
    return [tuple(cpus[i * per : (i + 1) * per]) for i in range(num_replicas)]


def cpu_list(cpus: Sequence[int]) -> str:
    """``taskset -c`` syntax: ``0``, ``0,1``, ``4-7``."""
    ordered = sorted(cpus)
    if len(ordered) > 1 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(str(c) for c in ordered)


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this machine's CPU (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def detect_gpus(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """GPU ids replicas can be given via CUDA_VISIBLE_DEVICES; empty on a CPU-only host.

    ``CUDA_VISIBLE_DEVICES`` when set (its entries, in order; empty or ``-1`` means none),
    else one id per line of ``nvidia-smi -L`` when nvidia-smi is installed and answers.
    """
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        return tuple(i for i in ids if i != "-1" and not i.startswith("-"))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=15, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return tuple(str(i) for i in range(count))


# Ports handed out are taken below the kernel's ephemeral range (ip_local_port_range), where
# no outgoing connection's local port can land between our check and the server's bind: a
# port from bind(0) is in that range, and with many connections opening (replicas, scrapes)
# one of them took it first often enough to fail a run. A per-process cursor (offset by the
# pid) keeps successive calls, and concurrent processes, on different ports.
_PORT_SPAN = 12_000
_cursor: list[int] = []


@functools.cache
def _listen_range() -> tuple[int, int] | None:
    """``(first, end)`` below the ephemeral range; None where there is no room or no Linux."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    first = max(1024, low - _PORT_SPAN)
    return (first, low) if low - first >= 1000 else None


def port_bindable(host: str, port: int, *, reuse_address: bool = False) -> bool:
    """Whether a TCP socket can bind ``host:port`` now. ``reuse_address``: as a server that
    sets SO_REUSEADDR would (a port whose old connections linger in TIME_WAIT counts as
    free); without it, only a port nothing holds at all."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if reuse_address:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", avoid: set[int] | None = None) -> int:
    """A TCP port that was free a moment ago (and not in ``avoid``), never one this process
    handed out recently."""
    bind_host = host if host not in ("0.0.0.0", "*", "") else "127.0.0.1"
    span = _listen_range()
    if span is not None:
        first, end = span
        if not _cursor:
            _cursor.append(first + (os.getpid() * 211) % (end - first))
        for _ in range(256):
            port = _cursor[0]
            _cursor[0] = port + 1 if port + 1 < end else first
            if (not avoid or port not in avoid) and port_bindable(bind_host, port):
                return port
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((bind_host, 0))
            port = int(s.getsockname()[1])
        if not avoid or port not in avoid:
            return port
    raise OSError("could not find a free TCP port")


def split_args(text: str) -> list[str]:
    """Split a flag string the way a shell would (VLLM_ADDITIONAL_ARGS)."""
    return shlex.split(text)


def _groups(argv: Sequence[str]) -> list[tuple[str | None, list[str]]]:
    """Split argv into ``(flag, tokens)`` groups; ``--x=y`` keeps its value in the token."""
    groups: list[tuple[str | None, list[str]]] = []
    for token in argv:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            groups.append((flag, [token]))
        elif groups:
            groups[-1][1].append(token)
        else:
            groups.append((None, [token]))
    return groups


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The last value given for ``flag`` (``--flag v`` or ``--flag=v``); None if absent."""
    value: str | None = None
    for name, tokens in _groups(argv):
        if name != flag:
            continue
        if "=" in tokens[0]:
            value = tokens[0].split("=", 1)[1]
        elif len(tokens) > 1:
            value = tokens[1]
        else:
            value = ""
    return value


def merge_args(
    base: Sequence[str], extra: Sequence[str], *, protected: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """Append ``extra`` to ``base``; a flag given in ``extra`` replaces the same flag in base.

    Flags in ``protected`` (``--host``, ``--port`` ...) stay kvgate's: the extra ones are
    dropped and reported. Returns ``(argv, notes)``.
    """
    notes: list[str] = []
    extra_groups = _groups(extra)
    kept_extra: list[tuple[str | None, list[str]]] = []
    for flag, tokens in extra_groups:
        if flag is not None and flag in protected:
            notes.append(
                f"ignored {' '.join(tokens)!r} from the extra arguments: kvgate sets {flag}"
            )
            continue
        kept_extra.append((flag, tokens))
    overridden = {flag for flag, _ in kept_extra if flag is not None}
    out: list[str] = []
    head = list(base)
    # Leading positional tokens (the program and module) are never replaced.
    while head and not head[0].startswith("--"):
        out.append(head.pop(0))
    for flag, tokens in _groups(head):
        if flag in overridden:
            notes.append(f"{flag} taken from the extra arguments")
            continue
        out.extend(tokens)
    for _, tokens in kept_extra:
        out.extend(tokens)
    return out, notes


def replace_flag(argv: Sequence[str], flag: str, value: str) -> list[str]:
    """``argv`` with every occurrence of ``flag`` replaced by ``flag value`` (once, at the end)."""
    out: list[str] = []
    head = list(argv)
    while head and not head[0].startswith("--"):
        out.append(head.pop(0))
    for name, tokens in _groups(head):
        if name != flag:
            out.extend(tokens)
    out.extend([flag, value])
    return out
