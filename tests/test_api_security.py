"""Security probes against a real server (uvicorn on a free loopback port, real engine and SQLite):
authentication, run ownership, admin-only tools, hostile archives (zip-slip, absolute names,
symlinks, zip bombs, lying headers), file names that try to leave the run folder, oversized bodies,
CORS, and the configuration rules. Each probe must fail safely: the right status, and nothing
written outside the run folder."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import stat
import struct
import zipfile
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import structlog

from maze_api import create_app
from maze_api.auth import TokenTable, hash_token, is_loopback
from maze_api.testing import logging_restored, serve
from maze_core import events as ev
from maze_core.config import load_config
from maze_core.engine import Engine
from maze_core.errors import ConfigError
from maze_core.registry import ToolRegistry
from tests.conftest import make_config
from tests.test_api_server import CAPTION, gate, gated, seed_payload, summarize, wait_run

ALICE = "alice-admin-token-000000000"
BOB = "bob-user-token-11111111111111"
CAROL = "carol-user-token-2222222222222"
MAX_BODY_MB = 0.25
SECRET = b"top secret outside the run folder"


@pytest.fixture(scope="module", autouse=True)
def _leave_logging_as_found():
    with logging_restored():
        yield


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec")
    cfg = make_config(tmp)
    cfg.server.tokens = [f"alice={ALICE}", f"bob={BOB}", f"carol={hash_token(CAROL)}"]  # carol: hashed
    cfg.server.admins = ["alice"]
    cfg.server.max_body_mb = MAX_BODY_MB
    cfg.server.max_archive_mb = 1.0
    cfg.server.max_archive_files = 50
    cfg.server.max_compression_ratio = 50
    cfg.logging.level = "WARNING"
    (tmp / "outside").mkdir()
    (tmp / "outside" / "secret.txt").write_bytes(SECRET)
    engine = Engine.from_config(cfg, registry=ToolRegistry())
    engine.start()
    app = create_app(cfg, engine)
    with serve(app) as url:
        yield {"url": url, "engine": engine, "root": tmp, "config": cfg}
    engine.stop()
    engine.store.close()


def client(api, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=api["url"], headers=headers, timeout=30)


@pytest.fixture
def alice(api):
    with client(api, ALICE) as c:
        yield c


@pytest.fixture
def bob(api):
    with client(api, BOB) as c:
        yield c


@pytest.fixture
def carol(api):
    with client(api, CAROL) as c:
        yield c


def tree(root: Path) -> dict[str, bytes | str]:
    """Every file under ``root`` except the store's and run folders' (which the server owns)."""
    out: dict[str, bytes | str] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if rel.startswith("data/") and (rel.startswith("data/maze.db") or rel.startswith("data/runs/")):
                continue
            out[rel] = os.readlink(path) if path.is_symlink() else path.read_bytes()
    return out


@pytest.fixture
def untouched(api):
    """Assert the test wrote nothing outside run folders."""
    root = api["root"]
    before = tree(root)
    yield
    assert tree(root) == before
    assert (root / "outside" / "secret.txt").read_bytes() == SECRET


@pytest.fixture
def refused(api, untouched):
    """Assert, besides, that no run folder was left behind by refused submissions."""
    runs = api["root"] / "data" / "runs"
    folders = set(runs.iterdir()) if runs.exists() else set()
    yield
    assert (set(runs.iterdir()) if runs.exists() else set()) == folders


def submit(c: httpx.Client, archive: bytes | None = None, payload: dict = CAPTION) -> httpx.Response:
    files = {"workflow_payload": ("w.json", json.dumps(payload))}
    if archive is not None:
        files["project_archive"] = ("p.zip", archive)
    return c.post("/submit_workflow/", files=files)


def run_of(c: httpx.Client, archive: dict[str, bytes | str] | None = None) -> str:
    response = submit(c, zip_of(archive or {}))
    assert response.status_code == 200, response.text
    return response.json()["run_id"]


def zip_of(files: dict[str, bytes | str], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_with(infos: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for info, data in infos:
            zf.writestr(info, data)
    return buf.getvalue()


def symlink_member(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def run_folder(api, run_id: str) -> Path:
    return Path(api["engine"].store.read_stream(ev.run_stream(run_id))[0].data["workdir"])


# ---------------------------------------------------------------------------- authentication
PROTECTED = [
    ("POST", "/submit_workflow/"), ("POST", "/get/"), ("GET", "/runs"), ("GET", "/runs/x"),
    ("GET", "/runs/x/summary"), ("POST", "/runs/destroy"), ("GET", "/runs/x/download"),
    ("POST", "/runs/x/tasks/t1/cancel"), ("POST", "/runs/x/cancel"), ("GET", "/files/hashes/x"),
    ("POST", "/files/download/x"), ("POST", "/files/upload/x"), ("GET", "/tools"),
    ("POST", "/tools/upload"), ("DELETE", "/tools/x"), ("POST", "/tools/reload"), ("GET", "/cluster"),
    ("GET", "/runs/x/events"), ("GET", "/runs/x/events/stream"),
]


@pytest.mark.parametrize("method, path", PROTECTED)
@pytest.mark.parametrize("token", [None, "wrong-token-but-long-enough", "Basic"])
def test_every_endpoint_needs_a_valid_token(api, method, path, token):
    headers = {}
    if token == "Basic":
        headers["Authorization"] = "Basic YWxpY2U6eA=="
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    response = httpx.request(method, api["url"] + path, headers=headers, timeout=30)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert "detail" in response.json()


@pytest.mark.parametrize("header", [
    "", "Bearer", "Token " + ALICE, ALICE, "Bearer " + ALICE.upper(), "Bearer " + ALICE[:-1],
    "Bearer " + ALICE + "0", "Bearer " + ALICE + " " + ALICE, "Bearer " + hash_token(ALICE),
    "Bearer " + hash_token(ALICE).removeprefix("sha256:"), "Bearer " + hash_token(CAROL),
    "Basic " + __import__("base64").b64encode(f"alice:{ALICE}".encode()).decode(),
])
def test_malformed_or_near_miss_authorization_is_401(api, header):
    """Empty, scheme-only, other schemes, a token off by one character, and the stored hash
    presented as the token (the configuration holds only hashes: they must not log in)."""
    response = httpx.get(api["url"] + "/runs", headers={"Authorization": header}, timeout=30)
    assert response.status_code == 401, response.text
    response = httpx.post(api["url"] + "/tools/reload", headers={"Authorization": header}, timeout=30)
    assert response.status_code == 401, response.text


def test_bearer_scheme_is_case_insensitive(api):
    assert httpx.get(api["url"] + "/runs", headers={"Authorization": "bearer " + BOB}).status_code == 200


def test_health_and_docs_are_public(api):
    assert httpx.get(api["url"] + "/health").status_code == 200
    assert httpx.get(api["url"] + "/openapi.json").status_code == 200


def test_hashed_tokens_log_in_and_plain_tokens_are_not_kept(api, carol):
    assert carol.get("/runs").status_code == 200
    tokens = api["config"].server.tokens
    assert all("=sha256:" in entry for entry in tokens)
    assert not any(secret in json.dumps(api["config"].model_dump()) for secret in (ALICE, BOB, CAROL))


# ---------------------------------------------------------------------------- ownership
def test_another_tokens_run_is_not_found(api, alice, bob, carol):
    run_id = run_of(bob, {"a.txt": "a"})
    wait_run(bob, run_id)
    assert bob.get(f"/runs/{run_id}").json()["owner"] == "bob"
    probes = [
        ("POST", "/get/", {"json": {"run_id": run_id, "task_id": "t1"}}),
        ("GET", f"/runs/{run_id}", {}), ("GET", f"/runs/{run_id}/summary", {}),
        ("GET", f"/runs/{run_id}/download", {}), ("POST", f"/runs/{run_id}/tasks/t1/cancel", {}),
        ("POST", f"/runs/{run_id}/cancel", {}), ("POST", "/runs/destroy", {"json": {"run_id": run_id}}),
        ("GET", f"/files/hashes/{run_id}", {}), ("POST", f"/files/download/{run_id}", {"json": {"files": ["a.txt"]}}),
        ("POST", f"/files/upload/{run_id}", {"files": {"b.txt": ("b.txt", b"b")}}),
        ("GET", f"/runs/{run_id}/events", {}), ("GET", f"/runs/{run_id}/events/stream", {}),
    ]
    for method, path, kwargs in probes:
        response = carol.request(method, path, **kwargs)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["detail"] == f"run {run_id!r} does not exist"   # same as a missing run
    assert run_id not in {r["run_id"] for r in carol.get("/runs", params={"limit": 1000}).json()["runs"]}
    assert not (run_folder(api, run_id) / "b.txt").exists()
    assert run_folder(api, run_id).exists()             # carol's destroy did nothing
    assert alice.get(f"/runs/{run_id}").status_code == 200   # an admin sees every run
    assert bob.post("/get/", json={"run_id": run_id, "task_id": "t1"}).status_code == 200


def test_tool_administration_needs_an_admin(bob, carol):
    archive = {"tool_archive": ("t.zip", zip_of({"t.py": "x = 1\n"}))}
    assert bob.post("/tools/upload", data={"tool_name": "t"}, files=archive).status_code == 403
    assert carol.delete("/tools/t").status_code == 403
    assert bob.post("/tools/reload").status_code == 403
    assert bob.get("/tools").status_code == 200   # listing is for every token


# ---------------------------------------------------------------------------- archives
@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/tmp/maze-evil.txt",
                                  "C:/evil.txt", "..\\evil.txt", "ok/.."])
def test_hostile_member_names_are_refused(alice, refused, name):
    archive = zip_with([(zipfile.ZipInfo("fine.txt"), b"fine"), (zipfile.ZipInfo(name), b"evil")])
    response = submit(alice, archive)
    assert response.status_code == 400, response.text
    assert "invalid name" in response.json()["detail"] or "not a valid zip" in response.json()["detail"]
    assert not Path("/tmp/maze-evil.txt").exists()


def test_symlink_members_are_refused(alice, refused, api):
    outside = str(api["root"] / "outside" / "secret.txt")
    for member in (symlink_member("link", outside), symlink_member("dir/link", "../../outside")):
        response = submit(alice, zip_with([member, (zipfile.ZipInfo("dir/after.txt"), b"x")]))
        assert response.status_code == 400 and "symbolic link" in response.json()["detail"]


def test_zip_bomb_is_refused_by_its_ratio(alice, refused):
    bomb = zip_of({"zeros.bin": b"\0" * 900_000})   # about 1 KB compressed, under the 1 MB total
    assert len(bomb) < 20_000
    response = submit(alice, bomb)
    assert response.status_code == 413 and "zip bomb" in response.json()["detail"]


def test_archives_over_the_size_or_count_limits_are_refused(alice, refused):
    # 12 members of 100 KB each: no member is a bomb, together they pass the 1 MB limit
    total = zip_of({f"f{i}.txt": b"A" * 100_000 for i in range(12)})
    assert len(total) < MAX_BODY_MB * 1024 * 1024
    response = submit(alice, total)
    assert response.status_code == 413 and "max_archive_mb" in response.json()["detail"]
    many = zip_of({f"f{i}.txt": "x" for i in range(51)})
    response = submit(alice, many)
    assert response.status_code == 413 and "max_archive_files" in response.json()["detail"]


def test_header_sizes_are_not_trusted(alice, refused):
    """A member whose headers understate its size: extraction stops at the claimed size and the
    checksum fails; the bytes written are counted, never the header's word."""
    data = zip_of({"big.txt": b"A" * 200_000})
    patched = bytearray(data)
    local = patched.find(b"PK\x03\x04")
    central = patched.find(b"PK\x01\x02")
    struct.pack_into("<I", patched, local + 22, 10)      # uncompressed size in the local header
    struct.pack_into("<I", patched, central + 24, 10)    # ... and in the central directory
    response = submit(alice, bytes(patched))
    assert response.status_code == 400, response.text


def test_claimed_compressed_size_beyond_the_archive_is_refused_with_a_reason(alice, refused):
    """A central directory claiming 50 MB of compressed data for a ~1 KB member: zipfile runs out
    of bytes within its first read (EOFError, no message) and the refusal must still say why."""
    patched = bytearray(zip_of({"zeros.bin": b"\0" * 900_000}))
    central = patched.find(b"PK\x01\x02")
    struct.pack_into("<I", patched, central + 20, 50_000_000)   # compressed size in the central directory
    response = submit(alice, bytes(patched))
    assert response.status_code == 400, response.text
    assert response.json()["detail"].endswith("corrupt or unsupported: EOFError"), response.text


def duplicate_names() -> bytes:
    with pytest.warns(UserWarning, match="Duplicate name"):
        return zip_with([(zipfile.ZipInfo("a.txt"), b"1"), (zipfile.ZipInfo("a.txt"), b"2")])


@pytest.mark.parametrize("archive, text", [
    (lambda: b"not a zip at all", "not a valid zip"),
    (duplicate_names, "appears twice"),
])
def test_malformed_archives_are_refused(alice, refused, archive, text):
    response = submit(alice, archive())
    assert response.status_code == 400 and text in response.json()["detail"]


def test_encrypted_members_are_refused(alice, refused):
    data = bytearray(zip_of({"secret.txt": b"xx"}))
    for header, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):   # the "encrypted" flag bit
        at = data.find(header) + offset
        data[at] |= 0x1
    response = submit(alice, bytes(data))
    assert response.status_code == 400 and "encrypted" in response.json()["detail"]


def test_hostile_tool_archives_are_refused(alice, api, untouched):
    cache = api["root"] / "maze" / "model_cache"
    for members in ([(zipfile.ZipInfo("../../evil.py"), b"x = 1")],
                    [symlink_member("tool.py", "/etc/passwd")],
                    [(zipfile.ZipInfo("/abs.py"), b"x = 1")]):
        response = alice.post("/tools/upload", data={"tool_name": "hostile"},
                              files={"tool_archive": ("t.zip", zip_with(members))})
        assert response.status_code == 400, response.text
        assert not (cache / "hostile").exists()


# ---------------------------------------------------------------------------- file names
@pytest.mark.parametrize("name", ["../secret.txt", "../../outside/secret.txt", "/etc/passwd",
                                  "a/../../x", "a\x00b", "..", "", "C:/x", "..\\..\\x"])
def test_download_names_are_confined_to_the_run_folder(alice, untouched, name, api):
    run_id = run_of(alice, {"a.txt": "a"})
    response = alice.post(f"/files/download/{run_id}", json={"files": ["a.txt", name]})
    assert response.status_code == 400, response.text
    assert SECRET not in response.content


def test_symlinks_planted_in_a_run_folder_are_not_followed(alice, api):
    run_id = run_of(alice, {"a.txt": "a"})
    folder = run_folder(api, run_id)
    os.symlink(api["root"] / "outside" / "secret.txt", folder / "leak.txt")   # as a task could
    os.symlink(api["root"] / "outside", folder / "leakdir")
    assert set(alice.get(f"/files/hashes/{run_id}").json()["hashes"]) == {"a.txt"}
    for name in ("leak.txt", "leakdir/secret.txt"):
        response = alice.post(f"/files/download/{run_id}", json={"files": [name]})
        assert response.status_code == 400 and SECRET not in response.content
    archive = alice.get(f"/runs/{run_id}/download")
    assert SECRET not in archive.content
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        assert zf.namelist() == ["a.txt"]
    for name in ("leakdir/new.txt", "leak.txt"):
        response = alice.post(f"/files/upload/{run_id}", files={name: ("x", b"overwrite")})
        assert response.status_code == 400, (name, response.text)
    assert (api["root"] / "outside" / "secret.txt").read_bytes() == SECRET
    assert not (api["root"] / "outside" / "new.txt").exists()
    wait_run(alice, run_id)
    assert alice.post("/runs/destroy", json={"run_id": run_id}).status_code == 200
    assert (api["root"] / "outside" / "secret.txt").read_bytes() == SECRET   # links removed, not followed


def test_files_with_odd_timestamps_are_still_downloaded(alice, api):
    """A task may leave files dated 1970 (or 2200): ZIP dates run 1980-2107, and
    ZipInfo.from_file refused the older ones, making both downloads a 500."""
    run_id = run_of(alice, {"a.txt": "a"})
    folder = run_folder(api, run_id)
    for name, when in (("old.txt", 0), ("future.txt", 7_258_118_400)):   # 1970, 2200
        (folder / name).write_text(name)
        os.utime(folder / name, (when, when))
    for response in (alice.get(f"/runs/{run_id}/download"),
                     alice.post(f"/files/download/{run_id}", json={"files": ["old.txt", "future.txt"]})):
        assert response.status_code == 200, response.text
        with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
            assert zf.read("old.txt") == b"old.txt" and zf.read("future.txt") == b"future.txt"
            assert zf.getinfo("old.txt").date_time[0] == 1980


def test_symlink_loops_in_a_run_folder_are_refused_not_500(alice, api):
    run_id = run_of(alice, {"a.txt": "a"})
    folder = run_folder(api, run_id)
    os.symlink("loop", folder / "loop")                   # as a task could
    os.symlink("pong", folder / "ping")
    os.symlink("ping", folder / "pong")
    for name in ("loop/x", "ping/x", "loop"):
        response = alice.post(f"/files/download/{run_id}", json={"files": [name]})
        assert response.status_code == 400, (name, response.text)
        response = alice.post(f"/files/upload/{run_id}", files={name: ("x", b"x")})
        assert response.status_code == 400, (name, response.text)
        assert str(api["root"]) not in response.text
    assert set(alice.get(f"/files/hashes/{run_id}").json()["hashes"]) == {"a.txt"}
    assert alice.get(f"/runs/{run_id}/download").status_code == 200


@pytest.mark.parametrize("name", ["../evil.txt", "../../evil.txt", "/tmp/maze-evil-upload.txt",
                                  "a/../../evil.txt", "..", "C:/evil.txt", "a\\..\\..\\evil.txt"])
def test_upload_names_are_confined_to_the_run_folder(alice, api, name):
    run_id = run_of(alice, {"a.txt": "a"})
    folder = run_folder(api, run_id)
    before = tree(api["root"])
    response = alice.post(f"/files/upload/{run_id}", files={"good.txt": ("g", b"good"), name: ("e", b"evil")})
    assert response.status_code == 400, response.text
    assert not (folder / "good.txt").exists()            # every name is checked before writing
    assert tree(api["root"]) == before
    assert not Path("/tmp/maze-evil-upload.txt").exists()


@pytest.mark.parametrize("name", ["\uff0e\uff0e/x.txt", "\u2025/x.txt", "..%2Fx.txt", "a\u2215..\u2215x.txt",
                                  "\u202e\u2066txt.exe", "\u00e9t\u00e9/caf\u00e9.txt", "x:y.txt", ".../x.txt"])
def test_look_alike_names_stay_inside_the_run_folder(alice, api, untouched, name):
    """Unicode dots and slashes, percent-escapes and the like are plain names on this server's file
    system: written inside the run folder (or refused), read back under the same name."""
    run_id = run_of(alice)
    folder = run_folder(api, run_id)
    response = alice.post(f"/files/upload/{run_id}", files={name: ("x", b"look-alike")})
    if response.status_code == 400:
        assert list(folder.iterdir()) == []
        return
    assert response.status_code == 200, response.text
    written = [p for p in folder.rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in written] == [b"look-alike"]
    assert all(p.resolve().is_relative_to(folder) for p in written)
    got = alice.post(f"/files/download/{run_id}", json={"files": [name]})
    with zipfile.ZipFile(io.BytesIO(got.content)) as zf:
        assert [zf.read(n) for n in zf.namelist()] == [b"look-alike"]
    archive = submit(alice, zip_of({name: "look-alike"}))
    assert archive.status_code in (200, 400), archive.text


def test_upload_name_with_nul_is_refused(alice, api):
    run_id = run_of(alice)
    body = (b"--B\r\nContent-Disposition: form-data; name=\"a\x00b\"; filename=\"x\"\r\n\r\nevil\r\n--B--\r\n")
    response = alice.post(f"/files/upload/{run_id}", content=body,
                          headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert response.status_code == 400
    assert list(run_folder(api, run_id).iterdir()) == []


# ---------------------------------------------------------------------------- body limits
def test_oversized_body_is_refused_with_413(alice, refused):
    archive = zip_of({"big.bin": os.urandom(int(MAX_BODY_MB * 1024 * 1024) + 10_000)}, zipfile.ZIP_STORED)
    response = submit(alice, archive)
    assert response.status_code == 413, response.text
    assert "max_body_mb" in response.json()["detail"]


def raw_request(url: str, head: bytes, chunks: list[bytes] = ()) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        for chunk in chunks:
            sock.sendall(chunk)
        data = b""
        while True:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
    return data


def test_declared_length_over_the_limit_is_refused_before_reading(api, refused):
    head = (f"POST /submit_workflow/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
            f"Connection: close\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            f"Content-Length: {10**12}\r\n\r\n").encode()
    reply = raw_request(api["url"], head)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"max_body_mb" in reply


def test_streamed_body_is_counted(api, refused):
    """No Content-Length (chunked): the bytes are counted as they arrive."""
    head = (f"POST /submit_workflow/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
            f"Connection: close\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n").encode()

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    part = b'--B\r\nContent-Disposition: form-data; name="project_archive"; filename="p.zip"\r\n\r\n'
    blocks = [chunk(part)] + [chunk(b"x" * 65536)] * (int(MAX_BODY_MB * 1024 * 1024) // 65536 + 2)
    reply = raw_request(api["url"], head, [*blocks, chunk(b"\r\n--B--\r\n"), b"0\r\n\r\n"])
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert b"max_body_mb" in reply


@pytest.mark.parametrize("path, content_type", [
    ("/get/", "application/json"), ("/runs/destroy", "application/json"),
    ("/files/download/RUN", "application/json"), ("/files/upload/RUN", "multipart/form-data; boundary=B"),
    ("/tools/upload", "multipart/form-data; boundary=B"),
])
def test_streamed_bodies_are_counted_on_every_endpoint_that_reads_one(api, alice, untouched, path, content_type):
    run_id = run_of(alice)
    head = (f"POST {path.replace('RUN', run_id)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
            f"Connection: close\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    if content_type.startswith("multipart"):
        first = b'--B\r\nContent-Disposition: form-data; name="tool_archive"; filename="p.zip"\r\n\r\n'
    else:
        first = b'{"files": ["'
    blocks = [chunk(first)] + [chunk(b"x" * 65536)] * (int(MAX_BODY_MB * 1024 * 1024) // 65536 + 2)
    reply = raw_request(api["url"], head, [*blocks, b"0\r\n\r\n"])
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert list(run_folder(api, run_id).iterdir()) == []


@pytest.mark.parametrize("path", ["/get/", "/runs/destroy", "/files/download/x", "/submit_workflow/"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-but-long-enough"])
@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_unauthenticated_bodies_are_refused_before_they_are_read(api, path, auth, framing):
    """Without a valid token a client must not make the server read a body of up to max_body_mb:
    JSON endpoints read and parsed the whole body before the token was checked (and waited for
    it however slowly it came). Here the body stalls after 100 KB: the 401 must come anyway."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Authorization: {auth}\r\n" if auth else ""
    first = b'{"run_id": "' + b"x" * 100_000
    if framing == "chunked":
        head += "Transfer-Encoding: chunked\r\n\r\n"
        first = f"{len(first):x}\r\n".encode() + first + b"\r\n"
    else:
        head += f"Content-Length: {len(first) + 100_000}\r\n\r\n"
    host, port = api["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head.encode() + first)     # ...and nothing more
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 401"), reply[:300]
    assert b"www-authenticate: Bearer" in reply.lower().replace(b"bearer", b"Bearer")


def test_bad_json_bodies_are_422(alice):
    response = alice.post("/get/", content=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert alice.post("/runs/destroy", json={"run": "x"}).status_code == 422


# ---------------------------------------------------------------------------- errors and logs
def test_unexpected_errors_are_500_with_the_traceback_logged(alice, api, monkeypatch):
    run_id = run_of(alice)

    def explode(run_id: str):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(api["engine"].store, "list_tasks", explode)
    with structlog.testing.capture_logs() as logs:
        response = alice.post("/get/", json={"run_id": run_id, "task_id": "t1"})
    assert response.status_code == 500
    assert "disk on fire" not in response.text and "detail" in response.json()
    failed = [e for e in logs if e["event"] == "request failed"]
    assert failed and failed[0]["exc_info"] is True and "disk on fire" in failed[0]["error"]


def test_key_operations_log_at_info(alice, api):
    saved = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with structlog.testing.capture_logs() as logs:
            run_id = run_of(alice)
            wait_run(alice, run_id)
            alice.post("/runs/destroy", json={"run_id": run_id})
            held = submit(alice, None, seed_payload(("t1", gated, [], {"name": "log-cancel"}))).json()["run_id"]
            assert alice.post(f"/runs/{held}/cancel").status_code == 200
            gate("log-cancel").set()
    finally:
        structlog.configure(wrapper_class=saved)
    events = {(e["event"], e["log_level"]) for e in logs}
    assert {("workflow submitted", "info"), ("run destroyed", "info"), ("run cancelled", "info")} <= events
    submitted = next(e for e in logs if e["event"] == "workflow submitted")
    assert submitted["owner"] == "alice" and ALICE not in json.dumps(logs, default=str)


def by_reference(tmp_path: Path, module: str) -> dict:
    """A seed payload whose function is pickled by reference to ``module`` (which the project
    archive must then provide)."""
    import sys
    (tmp_path / f"{module}.py").write_text("from maze_core import task\n\n@task\ndef g(x: int) -> dict:\n"
                                           "    return {}\n")
    sys.path.insert(0, str(tmp_path))
    try:
        return seed_payload(("t1", __import__(module).g, [], {"x": 1}))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)


def leaks(api, text: str) -> list[str]:
    import sys
    roots = {str(api["root"]), str(api["root"].resolve()), sys.prefix, sys.base_prefix}
    return [root for root in roots if root in text]


def test_error_details_hold_no_server_paths(alice, api, tmp_path, refused):
    """An ImportError names the module's file by its absolute path: a 422 must not hand the
    server's folders (run folder, tool folder, Python installation) to the client."""
    module = "maze_api_leakprobe_mod"
    archive = zip_of({f"{module}.py": "from maze_api_leakprobe_helper import nothing\n",
                      "maze_api_leakprobe_helper.py": "x = 1\n"})
    response = submit(alice, archive, by_reference(tmp_path, module))
    assert response.status_code == 422, response.text
    assert "cannot import name 'nothing'" in response.json()["detail"]
    assert not leaks(api, response.text), response.text
    assert "maze_api_leakprobe_helper.py" in response.json()["detail"]   # still says which file
    archive = zip_of({f"{module}.py": "from json import nothing\n"})   # a module of the server's Python
    response = submit(alice, archive, by_reference(tmp_path, module))
    assert response.status_code == 422 and not leaks(api, response.text), response.text
    response = alice.post("/tools/upload", data={"tool_name": "leaky"}, files={"tool_archive": (
        "t.zip", zip_of({"t.py": "from leaky_helper import nothing\n", "leaky_helper.py": "x = 1\n"}))})
    assert response.status_code == 422, response.text
    assert "cannot import name 'nothing'" in response.json()["detail"]
    assert not leaks(api, response.text), response.text


# ---------------------------------------------------------------------------- CORS and exposure
def test_cors_origins_come_from_config(tmp_path, api):
    preflight = {"Origin": "http://good.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    response = httpx.options(api["url"] + "/runs", headers=preflight)
    assert "access-control-allow-origin" not in response.headers   # none by default
    cfg = make_config(tmp_path)
    cfg.server.cors_origins = ["http://good.example"]
    cfg.logging.level = "WARNING"
    engine = Engine.from_config(cfg, registry=ToolRegistry())
    engine.start()
    try:
        with serve(create_app(cfg, engine)) as url:
            good = httpx.options(url + "/runs", headers=preflight)
            assert good.headers["access-control-allow-origin"] == "http://good.example"
            evil = httpx.options(url + "/runs", headers={**preflight, "Origin": "http://evil.example"})
            assert "access-control-allow-origin" not in evil.headers
            plain = httpx.get(url + "/health", headers={"Origin": "http://good.example"})
            assert plain.headers["access-control-allow-origin"] == "http://good.example"
    finally:
        engine.stop()
        engine.store.close()


def test_loopback_without_tokens_is_open_and_owned_by_local(tmp_path):
    cfg = make_config(tmp_path)
    cfg.logging.level = "WARNING"
    engine = Engine.from_config(cfg, registry=ToolRegistry())
    engine.start()
    try:
        with serve(create_app(cfg, engine)) as url, httpx.Client(base_url=url) as anon:
            response = submit(anon, None, seed_payload(("t1", summarize, [], {"text": "hi"})))
            assert response.status_code == 200, response.text
            run = wait_run(anon, response.json()["run_id"])
            assert run["owner"] == "local" and run["status"] == "succeeded"
            assert anon.get("/cluster").status_code == 200
    finally:
        engine.stop()
        engine.store.close()


def test_tokenless_server_refuses_browser_cross_origin_and_rebound_requests(tmp_path, api):
    """Without tokens every caller is the local admin, so a web page the user visits must not be
    one: browsers send a cross-origin multipart POST without a CORS preflight (the page cannot
    read the answer, but the workflow - code - runs), and DNS rebinding makes the page's own name
    point at 127.0.0.1. Requests carrying a foreign Origin, or a Host that is not a loopback
    name, are refused; the SDK, curl and the server's own /docs page are not affected."""
    cfg = make_config(tmp_path)
    cfg.logging.level = "WARNING"
    cfg.server.cors_origins = ["http://good.example"]
    engine = Engine.from_config(cfg, registry=ToolRegistry())
    engine.start()
    payload = seed_payload(("t1", summarize, [], {"text": "hi"}))
    try:
        with serve(create_app(cfg, engine)) as url, httpx.Client(base_url=url) as anon:
            port = url.rsplit(":", 1)[1]
            for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                            {"Origin": "http://localhost:8888"},                  # another local web app
                            {"Host": f"evil.example:{port}"},                     # DNS rebinding
                            {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}):
                response = anon.post("/submit_workflow/", headers=headers,
                                     files={"workflow_payload": ("w.json", json.dumps(payload))})
                assert response.status_code == 403, (headers, response.text)
                assert anon.get("/runs", headers=headers).status_code == 403
            assert anon.get("/runs").json()["total"] == 0           # nothing ran
            for headers in ({}, {"Origin": url}, {"Origin": "http://good.example"},
                            {"Host": f"localhost:{port}"}, {"Host": f"[::1]:{port}"}):
                assert anon.get("/runs", headers=headers).status_code == 200, headers
            assert anon.get("/health", headers={"Origin": "http://evil.example"}).status_code == 403
    finally:
        engine.stop()
        engine.store.close()
    # with tokens, the token is what counts: a page cannot send one it does not have
    with client(api, ALICE) as alice:
        assert alice.get("/runs", headers={"Origin": "http://evil.example"}).status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_listening_beyond_loopback_needs_tokens(tmp_path, host):
    cfg = make_config(tmp_path)
    cfg.server.host = host
    with pytest.raises(ConfigError, match="beyond loopback"):
        create_app(cfg, object())
    cfg.server.tokens = [f"alice={ALICE}"]
    assert create_app(cfg, object()) is not None


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "maze.example", ""))


@pytest.mark.parametrize("tokens, admins, text", [
    (["alice=short"], [], "shorter than 16"),
    (["alice"], [], "name=token"),
    (["=" + ALICE], [], "name=token"),
    (["local=" + ALICE], [], "reserved"),
    (["bad name=" + ALICE], [], "invalid"),
    ([f"alice={ALICE}", f"alice={BOB}"], [], "appears twice"),
    ([f"alice={ALICE}", f"bob={ALICE}"], [], "same as another"),
    (["alice=sha256:abc"], [], "64 hex"),
    ([f"alice={ALICE}"], ["bob"], "no token has"),
])
def test_token_configuration_errors(tmp_path, tokens, admins, text):
    cfg = make_config(tmp_path)
    cfg.server.tokens, cfg.server.admins = tokens, admins
    with pytest.raises(ConfigError, match=text):
        TokenTable.from_config(cfg)


def test_tokens_file_and_environment(tmp_path):
    (tmp_path / "tokens").write_text(f"# team\nbob={BOB}\n\ncarol={hash_token(CAROL)}\n")
    cfg = load_config(None, environ={
        "MAZE_SERVER_TOKENS": json.dumps([f"alice={hash_token(ALICE)}"]),
        "MAZE_SERVER_TOKENS_FILE": str(tmp_path / "tokens"),
        "MAZE_SERVER_ADMINS": "alice",
        "MAZE_SERVER_CORS_ORIGINS": '["http://a.example:3000", "https://b.example"]'})
    assert cfg.server.cors_origins == ["http://a.example:3000", "https://b.example"]
    table = TokenTable.from_config(cfg)
    assert table.identify(ALICE).name == "alice" and table.identify(ALICE).admin
    assert table.identify(BOB).name == "bob" and not table.identify(BOB).admin
    assert table.identify(CAROL).name == "carol"
    assert table.identify("nobody-at-all-here") is None and len(table) == 3
    with pytest.raises(ConfigError, match="MAZE_SERVER_CORS_ORIGINS"):
        load_config(None, environ={"MAZE_SERVER_CORS_ORIGINS": "[not json"})


# ---------------------------------------------------------------------------- tool names
@pytest.mark.parametrize("name", ["evil\n", "evil\r", "evil\x00", "ev/il", "..", ".hidden", "evi\u2215l",
                                  "\uff45vil", "a" * 65])
def test_tool_names_are_validated_whole(alice, api, untouched, name):
    """A name must be letters, digits, '_' and '-' from start to end: ``re``'s ``$`` also matches
    before a trailing newline, which let ``evil\\n`` through as a folder name."""
    archive = zip_of({"t.py": "from maze_core import task\n\n@task\ndef probe_named_tool(x: int) -> dict:\n"
                              "    return {}\n"})
    response = alice.post("/tools/upload", data={"tool_name": name},
                          files={"tool_archive": ("t.zip", archive)})
    assert response.status_code == 400, response.text
    assert "probe_named_tool" not in api["engine"].registry
    cache = api["root"] / "maze" / "model_cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if "evil" in p.name or "vil" in p.name]
    if "/" not in name and "\u2215" not in name:
        assert alice.delete("/tools/" + quote(name, safe="").replace(".", "%2E")).status_code == 400
