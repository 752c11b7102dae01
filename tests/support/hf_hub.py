"""A Hugging Face Hub stand-in on loopback: serves local folders as model repositories.

``huggingface_hub`` (``hf_hub_download``, ``snapshot_download``) talks to whatever
``HF_ENDPOINT`` (or the ``endpoint=`` argument) names; this server answers the routes those
two use, read from huggingface_hub's own source (``file_download.py``, ``_snapshot_download.py``,
``hf_api.py``):

* ``GET /api/models/{repo}/revision/{rev}`` -- repo info: ``id``, ``sha`` (the commit the
  revision resolves to) and ``siblings``;
* ``GET /api/models/{repo}/tree/{rev}`` -- the file listing (one page: no ``Link`` header);
* ``HEAD|GET /{repo}/resolve/{rev}/{path}`` -- a file, with ``X-Repo-Commit``, ``ETag`` (the
  git blob id) and ``Content-Length``; a missing file is 404 ``X-Error-Code: EntryNotFound``,
  a missing repo 404 ``X-Error-Code: RepoNotFound``.

The server runs on its own event loop in a thread, because the code under test calls the
synchronous huggingface_hub client (and ``kvgate up`` subprocesses reach it too). Every
request is recorded in :attr:`HubServer.requests` as ``(method, path)``, so a test can tell
whether anything was fetched at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import pytest
from aiohttp import web

#: The one commit every served repository is at (40 hex digits, as the Hub's).
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _blob_id(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub sends as a small file's ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """Serve ``repos`` (repo id -> folder) as Hub model repositories; see the module docstring.

    Use as a context manager; :attr:`endpoint` is the base URL to give as ``HF_ENDPOINT``.
    """

    def __init__(self, repos: Mapping[str, Path]) -> None:
        self.repos = {repo_id: Path(folder) for repo_id, folder in repos.items()}
        self.requests: list[tuple[str, str]] = []
        self.endpoint = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> HubServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.endpoint = future.result(timeout=10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/models/{repo:.+}/revision/{rev}", self._info)
        app.router.add_get("/api/models/{repo:.+}/tree/{rev}", self._tree)
        app.router.add_route("*", "/{org}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- routes ---------------------------------------------------------------------------------

    def _files(self, repo_id: str) -> dict[str, Path] | None:
        folder = self.repos.get(repo_id)
        if folder is None:
            return None
        return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}

    @staticmethod
    def _not_found(code: str, what: str) -> web.Response:
        return web.Response(status=404, text=f"{what} not found", headers={"X-Error-Code": code})

    async def _info(self, request: web.Request) -> web.Response:
        repo_id = request.match_info["repo"]
        self.requests.append((request.method, request.path))
        files = self._files(repo_id)
        if files is None:
            return self._not_found("RepoNotFound", repo_id)
        return web.json_response(
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": COMMIT,
                "private": False,
                "siblings": [{"rfilename": name} for name in files],
            }
        )

    async def _tree(self, request: web.Request) -> web.Response:
        repo_id = request.match_info["repo"]
        self.requests.append((request.method, request.path))
        files = self._files(repo_id)
        if files is None:
            return self._not_found("RepoNotFound", repo_id)
        entries = []
        for name, path in files.items():
            data = path.read_bytes()
            entries.append({"type": "file", "path": name, "size": len(data), "oid": _blob_id(data)})
        return web.json_response(entries)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        self.requests.append((request.method, request.path))
        files = self._files(repo_id)
        if files is None:
            return self._not_found("RepoNotFound", repo_id)
        path = files.get(request.match_info["path"])
        if path is None:
            return self._not_found("EntryNotFound", request.match_info["path"])
        data = path.read_bytes()
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": f'"{_blob_id(data)}"',
            "Content-Length": str(len(data)),
            "Content-Type": "application/octet-stream",
        }
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers)
        return web.Response(status=200, body=data, headers=headers)


#: The SmolLM2 files the course ships (../shared beside the checkout); the loopback Hub serves them.
SMOLLM2 = Path(__file__).resolve().parents[2] / "../shared/models/smollm2-135m-instruct"
#: The repository name the tests ask the loopback Hub for.
REPO = "course/smollm2-copy"


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """SmolLM2's files plus stand-in weights: a folder the Hub serves as ``REPO``."""
    assert (SMOLLM2 / "config.json").is_file(), f"missing test data {SMOLLM2}"
    folder = tmp_path / "repo"
    shutil.copytree(SMOLLM2, folder)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 64)  # skipped: safetensors exist
    return folder


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache for the test, downloads allowed."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache
