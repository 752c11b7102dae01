"""Endpoints from URLs and from a watched file: parsing, errors, add/remove on change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvgate.endpoints.file import EndpointsFileError, EndpointsFileWatcher, load_endpoints_file
from kvgate.endpoints.pool import EndpointPool
from kvgate.endpoints.static import EndpointURLError, spec_from_url, specs_from_urls


def test_spec_from_url() -> None:
    s = spec_from_url("http://127.0.0.1:8001")
    assert (s.name, s.address, s.port, s.scheme) == ("127.0.0.1:8001", "127.0.0.1", 8001, "http")
    s = spec_from_url("https://[::1]:9000/v1", name="r", labels={"llm-d.ai/role": "decode"})
    assert (s.name, s.address, s.port, s.scheme) == ("r", "::1", 9000, "https")
    assert spec_from_url("localhost:80").scheme == "http"
    with pytest.raises(EndpointURLError, match="scheme"):
        spec_from_url("ftp://x:1")
    with pytest.raises(EndpointURLError, match="root"):
        spec_from_url("http://x:1/v1/chat/completions")
    with pytest.raises(EndpointURLError, match="twice"):
        specs_from_urls(["http://a:1", "http://a:1"])


def _touch(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()  # make the change visible even within one mtime tick
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_watcher_adds_removes_and_keeps_pool_on_bad_file(tmp_path: Path) -> None:
    f = tmp_path / "eps.yaml"
    f.write_text("- http://127.0.0.1:1\n")
    pool = EndpointPool()
    removed: list[str] = []
    pool.on_removed(removed.extend)
    static = [spec_from_url("http://127.0.0.1:9")]
    w = EndpointsFileWatcher(pool, f, static=static)
    w.load_now()
    assert sorted(e.name for e in pool.all()) == ["127.0.0.1:1", "127.0.0.1:9"]
    kept = pool.get("127.0.0.1:1")
    _touch(f, '{"endpoints": ["http://127.0.0.1:1", {"url": "http://127.0.0.1:2", "name": "b"}]}')
    assert w.poll()
    assert sorted(e.name for e in pool.all()) == ["127.0.0.1:1", "127.0.0.1:9", "b"]
    assert pool.get("127.0.0.1:1") is kept  # unchanged endpoints keep their object
    _touch(f, "- [broken\n")
    assert not w.poll()
    assert w.last_error is not None and str(f) in w.last_error
    assert len(pool) == 3  # a bad file never empties the pool
    _touch(f, "- url: http://127.0.0.1:2\n  name: b\n")
    assert w.poll()
    assert sorted(e.name for e in pool.all()) == ["127.0.0.1:9", "b"]
    assert removed == ["127.0.0.1:1"]
    assert not w.poll()  # no change, no reload


def test_file_errors_name_the_item(tmp_path: Path) -> None:
    f = tmp_path / "eps.json"
    f.write_text('["http://a:1", {"name": "x"}]')
    with pytest.raises(EndpointsFileError, match=r"\[1\]"):
        load_endpoints_file(f)
    f.write_text('"just a string"')
    with pytest.raises(EndpointsFileError, match="expected a list"):
        load_endpoints_file(f)
