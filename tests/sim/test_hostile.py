"""Hostile input against a real ``kvgate sim``: each answered with a clear 4xx, or at a bounded
cost (the connection closed within ``--read-timeout``), and the simulator serves on.

Raw sockets on loopback, so that what is sent is exactly what a hostile client would send;
Hypothesis (derandomized) for bodies and field types. ``KVGATE_FUZZ_EXAMPLES=N`` runs N
examples per property instead of the quick default.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.sim import SimHandle, start_sim

EXAMPLES = int(os.environ.get("KVGATE_FUZZ_EXAMPLES", "60"))
# no per-example deadline: a hang fails on the socket's 10 s timeout, and a loaded machine
# must not fail a slow example
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None)
READ_TIMEOUT_S = 1.0
MAX_BODY_BYTES = 64 * 1024 * 1024  # kvgate.sim.state.MAX_BODY_BYTES
HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def sim(module_spawn: Any) -> SimHandle:
    return start_sim(
        module_spawn,
        model="m1",
        speed=1000,
        max_model_len=256,
        read_timeout=READ_TIMEOUT_S,
    )


class Answer:
    """One HTTP/1.1 answer read off a raw socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def openai_error(self) -> dict[str, Any]:
        doc = json.loads(self.body)
        err = doc["error"]
        assert isinstance(err["message"], str) and err["message"]
        assert isinstance(err["type"], str) and err["code"] == self.status
        return dict(err)


def read_answer(sock: socket.socket, timeout_s: float = 10.0) -> Answer | None:
    """The next answer on ``sock``, or None when the server closed without one."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = recv(sock)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if status < 200:  # an interim answer has no body
        return Answer(status, headers, body)
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = recv(sock)
            assert chunk, "closed inside a body"
            body += chunk
    else:  # chunked (an event stream): read to the last chunk
        assert headers.get("transfer-encoding") == "chunked", headers
        while not body.endswith(b"0\r\n\r\n") and (chunk := recv(sock)):
            body += chunk
    return Answer(status, headers, body)


def recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except ConnectionResetError:
        return b""


def connect(sim: SimHandle) -> socket.socket:
    return socket.create_connection(("127.0.0.1", sim.port), timeout=10)


def post(sock: socket.socket, body: bytes, head: bytes = HEAD) -> Answer | None:
    sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return read_answer(sock)


@pytest.fixture
def conn(sim: SimHandle) -> Iterator[socket.socket]:
    sock = connect(sim)
    yield sock
    sock.close()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` (reading nothing else) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return recv(sock) == b""
    except TimeoutError:
        return False


def still_serves(sim: SimHandle) -> None:
    with connect(sim) as sock:
        answer = post(sock, b'{"model":"m1","prompt":"still there?","max_tokens":3}')
    assert answer is not None and answer.status == 200, answer and answer.body


# --- bodies -----------------------------------------------------------------------------------


def test_a_body_declared_too_large_is_413_before_it_is_read(sim: SimHandle) -> None:
    with connect(sim) as sock:
        started = time.monotonic()
        sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n{" % (1 << 40))
        answer = read_answer(sock)
        assert answer is not None and answer.status == 413
        assert time.monotonic() - started < 1.0
        assert str(MAX_BODY_BYTES) in answer.openai_error()["message"]
        assert answer.headers["connection"] == "close"


def test_a_chunked_body_past_the_limit_is_413(sim: SimHandle) -> None:
    with connect(sim) as sock:
        sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % (1 << 20) + b"x" * (1 << 20) + b"\r\n"
        try:
            for _ in range(MAX_BODY_BYTES // (1 << 20) + 2):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-body: the answer is already there
        answer = read_answer(sock)
    assert answer is not None and answer.status == 413
    answer.openai_error()


@FUZZ
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_as_a_body_are_a_400_in_openai_shape(sim: SimHandle, body: bytes) -> None:
    with connect(sim) as sock:
        answer = post(sock, body)
    assert answer is not None
    assert answer.status == 400, answer.body
    answer.openai_error()


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m1","prompt":"\xff\xfe\xfd","max_tokens":2}',  # invalid UTF-8
        b'{"model":"m1","prompt":"\\ud800","max_tokens":2}',  # a lone surrogate escape
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"model":"m1","prompt":"cut off',  # truncated JSON
        b'["model","m1"]',  # not an object
        b'{"model":"m1","prompt":"x","max_tokens":1e400}',  # a number past float
        b'{"model":"m1","prompt":"x","max_tokens":2,"n":99999999999999999999999}',
    ],
    ids=["utf8", "surrogate", "nested-array", "nested-object", "truncated", "array", "1e400", "n"],
)
def test_malformed_json_is_a_400_in_openai_shape(
    sim: SimHandle, conn: socket.socket, body: bytes
) -> None:
    answer = post(conn, body)
    assert answer is not None and answer.status in (200, 400), answer.body
    if answer.status == 400:
        answer.openai_error()
    else:  # a lone surrogate is valid JSON; the prompt is tokenized as it is
        assert json.loads(answer.body)["choices"]


# Any JSON value, to put where a field of another type is expected.
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
COMPLETION_FIELDS = [
    "model", "prompt", "max_tokens", "n", "stream", "stream_options", "stop", "temperature",
    "top_p", "seed", "logprobs", "echo", "ignore_eos", "min_tokens", "cache_salt",
    "add_special_tokens", "max_completion_tokens", "kv_transfer_params",
]  # fmt: skip
CHAT_FIELDS = ["messages", "model", "max_tokens", "stream", "stream_options", "tools", "n"]


@FUZZ
@given(
    chat=st.booleans(),
    field=st.sampled_from(sorted(set(COMPLETION_FIELDS) | set(CHAT_FIELDS))),
    value=JSON,
)
def test_a_field_of_any_type_is_answered_or_a_4xx_never_a_5xx(
    sim: SimHandle, chat: bool, field: str, value: Any
) -> None:
    body: dict[str, Any] = {"model": "m1", "max_tokens": 4}
    if chat:
        body["messages"] = [{"role": "user", "content": "hello"}]
    else:
        body["prompt"] = "hello"
    body[field] = value
    path = b"/v1/chat/completions" if chat else b"/v1/completions"
    head = HEAD.replace(b"/v1/completions", path)
    with connect(sim) as sock:
        answer = post(sock, json.dumps(body).encode(), head)
    assert answer is not None
    assert answer.status in (200, 400, 404), (answer.status, answer.body[:300])
    if answer.status != 200:
        answer.openai_error()


# --- heads and connections ---------------------------------------------------------------------


def test_an_oversized_header_and_too_many_headers_are_400(sim: SimHandle) -> None:
    body = b'{"model":"m1","prompt":"x","max_tokens":2}'
    for extra in (
        b"X-Big: " + b"a" * 9000 + b"\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(200)),
    ):
        with connect(sim) as sock:
            answer = post(sock, body, HEAD + extra)
            assert answer is not None and answer.status == 400
    log = sim.proc.log()
    assert "Traceback" not in log  # one warning line per malformed request
    assert log.count("Error handling request") >= 2


def test_truncated_requests_cost_nothing_after_the_close(sim: SimHandle) -> None:
    for cut in (
        b"POST /v1/completions HTTP/1.1\r\nHost",  # inside the head
        HEAD + b'Content-Length: 100\r\n\r\n{"model"',  # inside the body
        HEAD + b'Transfer-Encoding: chunked\r\n\r\n10\r\n{"model"',  # inside a chunk
    ):
        with connect(sim) as sock:
            sock.sendall(cut)
            sock.shutdown(socket.SHUT_WR)
            assert closed_within(sock, 5)
    still_serves(sim)
    with connect(sim) as sock:
        sock.sendall(b"GET /sim/stats HTTP/1.1\r\nHost: sim\r\n\r\n")
        answer = read_answer(sock)
    assert answer is not None
    stats = json.loads(answer.body)
    assert stats["running"] == 0 and stats["waiting"] == 0


def test_slow_and_silent_clients_are_closed_at_the_read_timeout(sim: SimHandle) -> None:
    silent = [connect(sim) for _ in range(20)]
    dripping = [connect(sim) for _ in range(20)]
    slow_body = connect(sim)
    for sock in dripping:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: sim\r\nX-Drip: ")
    slow_body.sendall(HEAD + b"Content-Length: 100\r\n\r\n{")
    started = time.monotonic()
    # a head sent a byte at a time, but whole within the timeout, is served
    with connect(sim) as sock:
        request = HEAD + b"Content-Length: 2\r\n\r\n{}"
        for i in range(len(request)):
            sock.sendall(request[i : i + 1])
        answer = read_answer(sock)
        assert answer is not None and answer.status == 400  # {} has no prompt
    deadline = started + READ_TIMEOUT_S + 3.0
    while time.monotonic() < deadline and dripping:
        for sock in list(dripping):
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                dripping.remove(sock)
                sock.close()
        time.sleep(0.1)
    assert not dripping, f"{len(dripping)} slowloris connections still open"
    for sock in silent:
        assert closed_within(sock, max(0.1, deadline - time.monotonic()))
        sock.close()
    answer = read_answer(slow_body)
    assert answer is not None and answer.status == 408
    assert "did not arrive within" in answer.openai_error()["message"]
    slow_body.close()
    assert time.monotonic() - started < READ_TIMEOUT_S + 4.0
    still_serves(sim)


def test_a_body_after_100_continue_is_read_as_the_same_request(sim: SimHandle) -> None:
    body = b'{"model":"m1","prompt":"continue","max_tokens":3}'
    with connect(sim) as sock:
        sock.sendall(HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        interim = read_answer(sock)
        assert interim is not None and interim.status == 100
        time.sleep(READ_TIMEOUT_S / 2)  # past the sweep tick: the connection must stay open
        sock.sendall(body)
        answer = read_answer(sock)
    assert answer is not None and answer.status == 200
