"""The temporary-upload store (spec §3): policies, the multipart POST's checks, resolving `oss://` keys."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from python_multipart import parse_form

from qasr.api.dashscope.uploads import ACCESS_KEY_ID, UploadStore
from qasr.errors import AudioTooLarge, InvalidUploadPolicy, Overloaded, QasrError, UploadNotFound

MODEL = "qwen3-asr-flash"
KEY = "sk-test-key"
HOST = "http://127.0.0.1:8000/oss"
POLICY_FIELDS = {
    "policy",
    "signature",
    "upload_dir",
    "upload_host",
    "expire_in_seconds",
    "max_file_size_mb",
    "capacity_limit_mb",
    "oss_access_key_id",
    "x_oss_object_acl",
    "x_oss_forbid_overwrite",
}


class Clock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_757_500_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path, clock: Clock) -> Iterator[UploadStore]:
    with UploadStore(
        root, secret="test-secret", policy_ttl_s=300, file_ttl_s=3600, max_bytes=1000, clock=clock
    ) as upload_store:
        yield upload_store


def form(grant: dict[str, str | int], name: str = "welcome.mp3", /, **overrides: str) -> dict[str, str]:
    """The form fields the SDK sends, in its order (`oss_utils.py` L74-88, spec §3.3)."""
    fields = {
        "OSSAccessKeyId": str(grant["oss_access_key_id"]),
        "Signature": str(grant["signature"]),
        "policy": str(grant["policy"]),
        "key": f"{grant['upload_dir']}/{name}",
        "x-oss-object-acl": str(grant["x_oss_object_acl"]),
        "x-oss-forbid-overwrite": str(grant["x_oss_forbid_overwrite"]),
        "success_action_status": "200",
        "x-oss-content-type": "audio/mpeg",
    }
    fields.update(overrides)
    return fields


def all_files(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


def decoded(policy: dict[str, str | int]) -> dict[str, object]:
    return json.loads(base64.b64decode(str(policy["policy"])))


# --- the policy --------------------------------------------------------------------------------------


def test_policy_has_the_fields_the_sdk_reads(store: UploadStore) -> None:
    policy = store.issue_policy(KEY, MODEL, HOST)
    assert set(policy) == POLICY_FIELDS
    assert policy["upload_host"] == HOST
    assert policy["oss_access_key_id"] == ACCESS_KEY_ID
    assert (policy["x_oss_object_acl"], policy["x_oss_forbid_overwrite"]) == ("private", "true")
    assert (policy["expire_in_seconds"], policy["max_file_size_mb"]) == (300, 1)
    assert str(policy["upload_dir"]).startswith("dashscope-instant/")
    assert len(base64.b64decode(str(policy["signature"]))) == 32  # HMAC-SHA256


def test_policy_names_expiry_dir_model_and_key_hash_but_never_the_key(store: UploadStore) -> None:
    policy = store.issue_policy(KEY, MODEL, HOST)
    document = decoded(policy)
    assert document["upload_dir"] == policy["upload_dir"]
    assert document["model"] == MODEL
    assert document["expires_at"] == store._clock() + 300
    assert document["max_bytes"] == 1000
    assert document["api_key_sha256"] not in (None, KEY)
    assert KEY not in base64.b64decode(str(policy["policy"])).decode()


def test_each_policy_gets_its_own_upload_dir(store: UploadStore) -> None:
    dirs = {store.issue_policy(KEY, MODEL, HOST)["upload_dir"] for _ in range(20)}
    assert len(dirs) == 20


# --- accept and resolve ------------------------------------------------------------------------------


def test_round_trip(store: UploadStore, root: Path) -> None:
    policy = store.issue_policy(KEY, MODEL, HOST)
    key = store.accept_upload(form(policy), "welcome.mp3", b"ID3 audio bytes")
    assert key == f"{policy['upload_dir']}/welcome.mp3"
    path = store.resolve("oss://" + key, KEY, MODEL)
    assert path.read_bytes() == b"ID3 audio bytes"
    assert path.parent.parent == root
    assert "welcome" not in path.name
    assert store.resolve(key, KEY, MODEL) == path  # a bare key works too
    assert not any(KEY.encode() in p.read_bytes() for p in all_files(root))


def test_stream_and_chunk_inputs(store: UploadStore) -> None:
    policy = store.issue_policy(None, MODEL, HOST)
    key_a = store.accept_upload(form(policy, "a.wav"), "a.wav", io.BytesIO(b"x" * 1000))
    key_b = store.accept_upload(form(policy, "b.wav"), None, iter([b"ab", b"", b"cd"]))
    assert store.resolve(key_a, None, MODEL).read_bytes() == b"x" * 1000
    assert store.resolve(key_b, None, MODEL).read_bytes() == b"abcd"


def test_field_names_are_case_insensitive(store: UploadStore) -> None:
    fields = {name.lower(): value for name, value in form(store.issue_policy(KEY, MODEL, HOST)).items()}
    assert store.accept_upload(fields, None, b"data")


def test_policy_survives_a_restart_with_a_configured_secret(root: Path, clock: Clock) -> None:
    with UploadStore(root, secret=b"shared", clock=clock) as first:
        policy = first.issue_policy(KEY, MODEL, HOST)
    with UploadStore(root, secret=b"shared", clock=clock) as second:
        key = second.accept_upload(form(policy), None, b"data")
    with UploadStore(root, clock=clock) as third:  # a fresh random secret: stored files stay readable
        assert third.resolve(key, KEY, MODEL).read_bytes() == b"data"


# --- forged, tampered and expired policies -----------------------------------------------------------


def test_forged_signature_refused(store: UploadStore, root: Path, clock: Clock) -> None:
    policy = store.issue_policy(KEY, MODEL, HOST)
    with UploadStore(root / "other", secret="another-secret", clock=clock) as other:
        foreign = other.issue_policy(KEY, MODEL, HOST)
    bad_signatures = [
        base64.b64encode(b"\0" * 32).decode(),
        str(foreign["signature"]),
        "",
        str(policy["signature"])[:-2],
        "ünïcode",
    ]
    for signature in bad_signatures:
        with pytest.raises(InvalidUploadPolicy):
            store.accept_upload(form(policy, Signature=signature), None, b"data")
    with pytest.raises(InvalidUploadPolicy, match="signature"):  # a policy signed by another server
        store.accept_upload(form(foreign), None, b"data")


@pytest.mark.parametrize(
    "change",
    [
        {"expires_at": 9_999_999_999.0},
        {"upload_dir": "dashscope-instant/x"},
        {"model": "other-model"},
        {"api_key_sha256": None},
        {"max_bytes": 10**12},
    ],
)
def test_tampered_policy_refused(store: UploadStore, change: dict[str, object]) -> None:
    policy = store.issue_policy(KEY, MODEL, HOST)
    document = {**decoded(policy), **change}
    tampered = base64.b64encode(json.dumps(document, sort_keys=True).encode()).decode()
    with pytest.raises(InvalidUploadPolicy, match="signature"):
        store.accept_upload(form(policy, policy=tampered), None, b"data")


def test_missing_fields_refused(store: UploadStore) -> None:
    policy = store.issue_policy(KEY, MODEL, HOST)
    for name in ("policy", "Signature", "OSSAccessKeyId", "key"):
        fields = form(policy)
        del fields[name]
        with pytest.raises(InvalidUploadPolicy):
            store.accept_upload(fields, None, b"data")
    with pytest.raises(InvalidUploadPolicy):
        store.accept_upload(form(policy, OSSAccessKeyId="LTAI-someone-else"), None, b"data")


def test_expired_policy_refused(store: UploadStore, clock: Clock) -> None:
    policy = store.issue_policy(KEY, MODEL, HOST)
    clock.advance(299)
    store.accept_upload(form(policy, "in-time.mp3"), None, b"data")
    clock.advance(1)
    with pytest.raises(InvalidUploadPolicy, match="expired"):
        store.accept_upload(form(policy, "late.mp3"), None, b"data")


# --- keys ----------------------------------------------------------------------------------------------


def test_key_outside_upload_dir_refused(store: UploadStore) -> None:
    policy = store.issue_policy(KEY, MODEL, HOST)
    other_dir = store.issue_policy(KEY, MODEL, HOST)["upload_dir"]
    upload_dir = str(policy["upload_dir"])
    for key in (f"{other_dir}/a.mp3", upload_dir, upload_dir + "/", upload_dir + "x/a.mp3", "a.mp3"):
        with pytest.raises(InvalidUploadPolicy):
            store.accept_upload(form(policy, key=key), None, b"data")


BAD_NAMES = [
    "..",
    ".",
    "../a.mp3",
    "../../../../etc/passwd",
    "a/b.mp3",
    "/etc/passwd",
    "..\\..\\evil.mp3",
    "a\\b.mp3",
    "a\x00.mp3",
    "a\n.mp3",
    "a\x7f.mp3",
    "\u202egpm.exe",
    "%2e%2e",
    "%2E%2E",
    "%2e%2e%2fetc%2fpasswd",
    "..%2fetc",
    "a%5cb.mp3",
    "a%00.mp3",
    "x" * 256,
    "语" * 86,  # 258 bytes of UTF-8
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_traversal_and_unsafe_names_refused(store: UploadStore, tmp_path: Path, name: str) -> None:
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    (sibling / "keep.txt").write_bytes(b"keep")
    before = all_files(tmp_path)
    policy = store.issue_policy(KEY, MODEL, HOST)
    with pytest.raises(InvalidUploadPolicy):
        store.accept_upload(form(policy, name), None, b"evil")
    for absolute in ("/etc/passwd", str(sibling / "keep.txt"), f"/{policy['upload_dir']}/{name}"):
        with pytest.raises(InvalidUploadPolicy):
            store.accept_upload(form(policy, key=absolute), None, b"evil")
    assert all_files(tmp_path) == before
    assert (sibling / "keep.txt").read_bytes() == b"keep"


@pytest.mark.parametrize("name", ["welcome.mp3", "100%.mp3", "a..b.mp3", "语音 clip (1).wav", "x" * 255])
def test_ordinary_names_accepted(store: UploadStore, name: str) -> None:
    key = store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST), name), name, b"data")
    assert store.resolve(key, KEY, MODEL).read_bytes() == b"data"


def test_nothing_written_outside_root(store: UploadStore, root: Path, tmp_path: Path) -> None:
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    policy = store.issue_policy(KEY, MODEL, HOST)
    for name in ["ok.mp3", *BAD_NAMES]:
        with contextlib.suppress(InvalidUploadPolicy):
            store.accept_upload(form(policy, name), name, b"data")
    assert all_files(tmp_path) == all_files(root)
    assert {p.parent.name for p in all_files(root)} == {"objects"}
    assert len(all_files(root)) == 2  # the one good upload: data + sidecar


def test_overwrite_refused(store: UploadStore) -> None:
    policy = store.issue_policy(KEY, MODEL, HOST)
    key = store.accept_upload(form(policy), None, b"first")
    with pytest.raises(InvalidUploadPolicy, match="overwritten"):
        store.accept_upload(form(policy), None, b"second")
    assert store.resolve(key, KEY, MODEL).read_bytes() == b"first"


def test_concurrent_uploads_of_one_key_store_exactly_one(store: UploadStore) -> None:
    policy = store.issue_policy(KEY, MODEL, HOST)
    barrier, outcomes = threading.Barrier(8), []

    def upload(index: int) -> None:
        barrier.wait()
        try:
            store.accept_upload(form(policy), None, bytes([index]) * 100)
            outcomes.append(index)
        except InvalidUploadPolicy:
            outcomes.append(-1)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i in outcomes if i >= 0]
    assert len(winners) == 1 and len(outcomes) == 8
    path = store.resolve(f"{policy['upload_dir']}/welcome.mp3", KEY, MODEL)
    assert path.read_bytes() == bytes([winners[0]]) * 100


# --- size and capacity -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [bytes, io.BytesIO, lambda b: iter([b[:500], b[500:]])])
def test_over_size_refused(store: UploadStore, root: Path, make: object) -> None:
    policy = store.issue_policy(KEY, MODEL, HOST)
    with pytest.raises(AudioTooLarge):
        store.accept_upload(form(policy, "big.mp3"), None, make(b"x" * 1001))  # type: ignore[operator]
    assert all_files(root) == set()
    key = store.accept_upload(form(policy, "fits.mp3"), None, make(b"x" * 1000))  # type: ignore[operator]
    assert store.resolve(key, KEY, MODEL).stat().st_size == 1000


def test_full_store_refused_until_cleanup_frees_room(root: Path, clock: Clock) -> None:
    with UploadStore(root, capacity_bytes=1000, max_files=2, file_ttl_s=60, clock=clock) as store:
        policy = store.issue_policy(KEY, MODEL, HOST)
        store.accept_upload(form(policy, "a.mp3"), None, b"x" * 600)
        with pytest.raises(Overloaded, match="full"):
            store.accept_upload(form(policy, "b.mp3"), None, b"x" * 600)
        store.accept_upload(form(policy, "c.mp3"), None, b"x" * 400)
        with pytest.raises(Overloaded, match="full"):  # the file count is capped too
            store.accept_upload(form(policy, "d.mp3"), None, b"x")
        clock.advance(61)
        fresh = store.issue_policy(KEY, MODEL, HOST)
        assert store.accept_upload(form(fresh, "b.mp3"), None, b"x" * 600)


# --- resolve: binding and expiry (§12.5) -------------------------------------------------------------


def test_wrong_api_key_or_model_refused(store: UploadStore) -> None:
    key = store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST)), None, b"data")
    with pytest.raises(UploadNotFound, match="not found") as other_key:
        store.resolve(key, "sk-someone-else", MODEL)
    with pytest.raises(UploadNotFound, match="not found"):
        store.resolve(key, None, MODEL)
    with pytest.raises(UploadNotFound, match="qwen3-asr-flash-2026-02-10"):
        store.resolve(key, KEY, "qwen3-asr-flash-2026-02-10")
    with pytest.raises(UploadNotFound) as unknown:
        store.resolve(key + "x", KEY, MODEL)
    # Another key's caller cannot tell a foreign object from a missing one.
    assert str(other_key.value) == str(unknown.value).replace("welcome.mp3x", "welcome.mp3")


def test_uploads_without_api_keys_are_bound_to_model(store: UploadStore) -> None:
    key = store.accept_upload(form(store.issue_policy(None, MODEL, HOST)), None, b"data")
    assert store.resolve(key, None, MODEL).read_bytes() == b"data"
    with pytest.raises(UploadNotFound):
        store.resolve(key, None, "other-model")


@pytest.mark.parametrize("reference", ["oss://", "", "oss://dashscope-instant/none/a.mp3", "oss://../../etc"])
def test_unknown_keys_refused(store: UploadStore, reference: str) -> None:
    with pytest.raises(UploadNotFound):
        store.resolve(reference, KEY, MODEL)


def test_expired_file_refused_then_removed_by_cleanup(store: UploadStore, root: Path, clock: Clock) -> None:
    key = store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST)), None, b"data")
    clock.advance(3599)
    assert store.cleanup() == 0
    assert store.resolve(key, KEY, MODEL).is_file()
    clock.advance(1)
    with pytest.raises(UploadNotFound, match="expired"):
        store.resolve(key, KEY, MODEL)
    assert store.cleanup() == 1
    assert all_files(root) == set()
    with pytest.raises(UploadNotFound, match="not found"):
        store.resolve(key, KEY, MODEL)


def test_issue_policy_cleans_up_at_most_once_a_minute(root: Path, clock: Clock) -> None:
    with UploadStore(root, file_ttl_s=10, clock=clock) as store:
        store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST)), None, b"data")
        clock.advance(30)
        store.issue_policy(KEY, MODEL, HOST)
        assert len(all_files(root / "objects")) == 2  # expired, but the last cleanup was 30 s ago
        clock.advance(30)
        store.issue_policy(KEY, MODEL, HOST)
        assert all_files(root / "objects") == set()


def test_cleanup_removes_corrupt_sidecars(store: UploadStore, root: Path) -> None:
    key = store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST)), None, b"data")
    [sidecar] = (root / "objects").glob("*.json")
    sidecar.write_text("{not json")
    with pytest.raises(UploadNotFound):
        store.resolve(key, KEY, MODEL)
    assert store.cleanup() == 1
    assert all_files(root) == set()


def test_cleanup_removes_abandoned_partial_files(store: UploadStore, root: Path) -> None:
    key = store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST)), None, b"data")
    old, fresh, orphan = root / "tmp" / "upload-old", root / "tmp" / "upload-now", root / "objects" / "0.data"
    for path in (old, fresh, orphan):
        path.write_bytes(b"partial")
    for path in (old, orphan):
        os.utime(path, (0, 0))
    assert store.cleanup() == 0
    assert not old.exists() and not orphan.exists() and fresh.exists()
    assert store.resolve(key, KEY, MODEL).read_bytes() == b"data"


# --- the directory -----------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_temporary_root_removed_by_close(clock: Clock) -> None:
    store = UploadStore(clock=clock)
    root = store.root
    key = store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST)), None, b"data")
    assert mode(root) == mode(root / "objects") == mode(root / "tmp") == 0o700
    assert {mode(p) for p in all_files(root)} == {0o600}
    assert store.resolve(key, KEY, MODEL).is_file()
    store.close()
    assert not root.exists()


def test_configured_root_kept_by_close(root: Path, clock: Clock) -> None:
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    store = UploadStore(root, clock=clock)
    store.close()
    assert mode(root / "objects") == mode(root / "tmp") == 0o700
    assert root.is_dir()


def test_invalid_limits_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        UploadStore(tmp_path, max_bytes=0)


# --- the real SDK's uploader against a loopback server -----------------------------------------------


class _Server(ThreadingHTTPServer):
    store: UploadStore
    seen: list[tuple[str, str, bool, str]]


class _Handler(BaseHTTPRequestHandler):
    """Just enough of getPolicy (§3.2), the OSS POST (§3.3) and generation (§3.4) for the SDK."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self._record(url.path)
        host = f"http://127.0.0.1:{self.server.server_address[1]}/oss"
        data = self.server.store.issue_policy(self._api_key(), query["model"][0], host)
        self._send(200, {"request_id": "req-policy", "data": data})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._record(self.path)
        try:
            if self.path == "/oss":
                self._upload(body)
                self._send(200, {})
            else:
                self._generate(json.loads(body))
        except QasrError as exc:
            self._send(403, {"code": type(exc).__name__, "message": exc.message})

    def _upload(self, body: bytes) -> None:
        fields: dict[str, str] = {}
        files: list[tuple[str | None, bytes]] = []

        def on_field(field: object) -> None:
            fields[field.field_name.decode()] = field.value.decode()  # type: ignore[attr-defined]

        def on_file(file: object) -> None:
            file.file_object.seek(0)  # type: ignore[attr-defined]
            name = file.file_name.decode() if file.file_name else None  # type: ignore[attr-defined]
            files.append((name, file.file_object.read()))  # type: ignore[attr-defined]

        headers = {"Content-Type": self.headers["Content-Type"].encode()}
        parse_form(headers, io.BytesIO(body), on_field, on_file)
        [(filename, data)] = files
        self.server.store.accept_upload(fields, filename, data)

    def _generate(self, request: dict[str, object]) -> None:
        messages = request["input"]["messages"]  # type: ignore[index]
        [audio] = [part["audio"] for m in messages if m["role"] == "user" for part in m["content"]]
        path = self.server.store.resolve(audio, self._api_key(), str(request["model"]))
        text = hashlib.sha256(path.read_bytes()).hexdigest()
        message = {"role": "assistant", "content": [{"text": text}]}
        output = {"choices": [{"finish_reason": "stop", "message": message}]}
        self._send(200, {"request_id": "req-gen", "output": output, "usage": {}})

    def _api_key(self) -> str | None:
        header = self.headers.get("Authorization")
        return header.removeprefix("Bearer ") if header else None

    def _record(self, path: str) -> None:
        resolve = self.headers.get("X-DashScope-OssResourceResolve", "")
        self.server.seen.append((self.command, path.split("?")[0], "Authorization" in self.headers, resolve))

    def _send(self, status: int, payload: dict[str, object]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def sdk_server(store: UploadStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    import dashscope

    server = _Server(("127.0.0.1", 0), _Handler)
    server.store, server.seen = store, []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.setattr(dashscope, "base_http_api_url", f"http://127.0.0.1:{server.server_address[1]}/api/v1")
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_real_sdk_uploads_and_names_the_object(
    sdk_server: _Server, store: UploadStore, tmp_path: Path
) -> None:
    from dashscope import MultiModalConversation
    from dashscope.api_entities.dashscope_response import MultiModalConversationResponse

    audio = tmp_path / "welcome.mp3"
    audio.write_bytes(bytes(range(256)) + b"\r\n--boundary--\r\n" + os.urandom(700))
    response = MultiModalConversation.call(
        api_key=KEY,
        model=MODEL,
        messages=[{"role": "user", "content": [{"audio": f"file://{audio}"}]}],
        result_format="message",
    )
    assert isinstance(response, MultiModalConversationResponse)
    assert response.status_code == 200, response
    digest = hashlib.sha256(audio.read_bytes()).hexdigest()
    assert response.output.choices[0].message.content == [{"text": digest}]
    # The OSS POST carries no Authorization; the generation call asks to resolve `oss://` (§3.3, §3.4).
    assert sdk_server.seen == [
        ("GET", "/api/v1/uploads", True, ""),
        ("POST", "/oss", False, ""),
        ("POST", "/api/v1/services/aigc/multimodal-generation/generation", True, "enable"),
    ]


def test_real_sdk_sees_an_upload_refusal(sdk_server: _Server, store: UploadStore, tmp_path: Path) -> None:
    from dashscope.common.error import UploadFileException
    from dashscope.utils.oss_utils import OssUtils

    audio = tmp_path / "big.wav"
    audio.write_bytes(b"x" * 1001)
    with pytest.raises(UploadFileException, match="AudioTooLarge"):
        OssUtils.upload(model=MODEL, file_path=str(audio), api_key=KEY)
    small = tmp_path / "small.wav"
    small.write_bytes(b"small")
    url, certificate = OssUtils.upload(model=MODEL, file_path=str(small), api_key=KEY)
    assert store.resolve(url, KEY, MODEL).read_bytes() == b"small"
    with pytest.raises(UploadFileException, match="overwritten"):  # the SDK reuses certificates (§3.3)
        OssUtils.upload(model=MODEL, file_path=str(small), api_key=KEY, upload_certificate=certificate)
