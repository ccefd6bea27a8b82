"""The temporary-upload store (spec §3): policies, the multipart POST's checks, resolving `oss://` keys;
then the real `dashscope` SDK's uploader against qasr itself."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dashscope.api_entities.dashscope_response import MultiModalConversationResponse

from qasr.audio.uploads import ACCESS_KEY_ID, UploadStore
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.errors import AudioTooLarge, InvalidUploadPolicy, UploadNotFound, UploadQuotaExceeded
from qasr.settings import Settings
from tests.api.inprocess import serve_in_thread
from tests.helpers import synthesize

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
    with UploadStore(root, secret=b"another", clock=clock) as third:  # another key: files stay readable
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


def test_full_store_refused_until_files_expire(root: Path, clock: Clock) -> None:
    with UploadStore(root, max_total_bytes=1000, max_total_objects=2, file_ttl_s=60, clock=clock) as store:
        policy = store.issue_policy(KEY, MODEL, HOST)
        store.accept_upload(form(policy, "a.mp3"), None, b"x" * 600)
        with pytest.raises(UploadQuotaExceeded, match="full"):
            store.accept_upload(form(policy, "b.mp3"), None, b"x" * 600)
        store.accept_upload(form(policy, "c.mp3"), None, b"x" * 400)
        with pytest.raises(UploadQuotaExceeded, match="full"):  # the file count is capped too
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


def test_issue_policy_touches_no_files_and_the_next_upload_expires_old_ones(root: Path, clock: Clock) -> None:
    with UploadStore(root, file_ttl_s=10, clock=clock) as store:
        store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST)), None, b"data")
        clock.advance(30)
        store.issue_policy(KEY, MODEL, HOST)
        assert len(all_files(root / "objects")) == 2  # expired, but a policy is only signed
        store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST), "new.mp3"), None, b"data")
        assert len(all_files(root / "objects")) == 2  # the new object only


def test_cleanup_removes_corrupt_sidecars_when_they_expire(
    store: UploadStore, root: Path, clock: Clock
) -> None:
    key = store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST)), None, b"data")
    [sidecar] = (root / "objects").glob("*.json")
    sidecar.write_text("{not json")
    with pytest.raises(UploadNotFound):
        store.resolve(key, KEY, MODEL)
    clock.advance(3600)  # the expiry time is kept in memory, not read back from the sidecar
    assert store.cleanup() == 1
    assert all_files(root) == set()


def test_cleanup_removes_abandoned_partial_files(store: UploadStore, root: Path) -> None:
    key = store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST)), None, b"data")
    old, fresh = root / "tmp" / "upload-old", root / "tmp" / "upload-now"
    for path in (old, fresh):
        path.write_bytes(b"partial")
    os.utime(old, (0, 0))
    assert store.cleanup() == 0
    assert not old.exists() and fresh.exists()
    assert store.resolve(key, KEY, MODEL).read_bytes() == b"data"


# --- the directory -----------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_temporary_root_removed_by_close(clock: Clock) -> None:
    store = UploadStore(clock=clock)
    root = store.root
    key = store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST)), None, b"data")
    assert mode(root) == mode(root / "objects") == mode(root / "tmp") == 0o700
    assert {mode(p) for p in all_files(root)} == {0o600}  # the data, its sidecar, the signing key
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


# --- the real SDK's uploader against qasr itself -----------------------------------------------------

SDK_UPLOAD_MAX_BYTES = 256 * 1024
OTHER_KEY = "sk-another-test-key"
GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clip = synthesize("Upload test.", tmp_path_factory.mktemp("speech") / "welcome.wav")
    assert clip.stat().st_size < SDK_UPLOAD_MAX_BYTES
    return clip


@pytest.fixture
def qasr_url(engine: Qwen3ASREngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """qasr on loopback, with API keys and a small upload limit, and the SDK pointed at it."""
    import dashscope

    settings = Settings(
        model="tiny",
        warmup=False,
        api_keys=[KEY, OTHER_KEY],
        upload_dir=tmp_path / "uploads",
        upload_max_bytes=SDK_UPLOAD_MAX_BYTES,
    )
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    with serve_in_thread(settings, engine) as url:
        monkeypatch.setattr(dashscope, "base_http_api_url", f"{url}/api/v1")
        yield url


def _sdk_transcribe(audio: str, api_key: str = KEY) -> MultiModalConversationResponse:
    from dashscope import MultiModalConversation

    response = MultiModalConversation.call(
        api_key=api_key,
        model=MODEL,
        messages=[{"role": "user", "content": [{"audio": audio}]}],
        result_format="message",
    )
    assert isinstance(response, MultiModalConversationResponse)
    return response


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """(method, path, status) of each request qasr answered, from its access log."""
    lines = [r.getMessage().split() for r in caplog.records if r.name == "qasr.access"]
    return [(method, path, status) for _, _, method, path, status, *_ in lines]


def test_real_sdk_uploads_and_names_the_object(
    qasr_url: str, speech: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dashscope.utils.oss_utils import OssUtils

    caplog.set_level(logging.INFO, logger="qasr.access")
    url, certificate = OssUtils.upload(model=MODEL, file_path=str(speech), api_key=KEY)
    by_reference = _sdk_transcribe(url)
    by_file = _sdk_transcribe(f"file://{speech}")  # the SDK uploads the file itself, then sends oss://
    inline = httpx.post(
        qasr_url + GENERATION,
        json={
            "model": MODEL,
            "input": {"messages": [{"role": "user", "content": [{"audio": _data_uri(speech)}]}]},
        },
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    )
    assert url == f"oss://{certificate['upload_dir']}/welcome.wav"
    assert url.startswith("oss://dashscope-instant/")
    # The uploads were authorised by the signed policy alone: the SDK's OSS POST carries no API key, and
    # this server requires one everywhere else (§3.3). Each access line is written before the next
    # request is read, so once the inline request is answered the SDK's six are all there.
    assert _access_lines(caplog)[:6] == [
        ("GET", "/api/v1/uploads", "200"),
        ("POST", "/api/v1/uploads/oss", "200"),
        ("POST", GENERATION, "200"),
        ("GET", "/api/v1/uploads", "200"),
        ("POST", "/api/v1/uploads/oss", "200"),
        ("POST", GENERATION, "200"),
    ]
    # The same bytes reached the model: the (deterministic) tiny model's answer for the uploaded object
    # is its answer for the file sent inline.
    assert inline.status_code == 200, inline.text
    expected = inline.json()["output"]["choices"][0]["message"]["content"]
    assert expected[0]["text"]
    for response in (by_reference, by_file):
        assert response.status_code == 200, response
        assert response.output.choices[0].message.content == expected
        assert response.usage["seconds"] == inline.json()["usage"]["seconds"]


def test_real_sdk_sees_an_upload_refusal(qasr_url: str, speech: Path, tmp_path: Path) -> None:
    from dashscope.common.error import UploadFileException
    from dashscope.utils.oss_utils import OssUtils

    grant = OssUtils.get_upload_certificate(model=MODEL, api_key=KEY)
    assert grant.status_code == 200, grant
    certificate = grant.output
    big = tmp_path / "big.wav"
    big.write_bytes(b"x" * (SDK_UPLOAD_MAX_BYTES + 1))
    with pytest.raises(UploadFileException, match="InvalidParameter") as too_large:
        OssUtils.upload(model=MODEL, file_path=str(big), api_key=KEY, upload_certificate=certificate)
    assert f"upload limit of {SDK_UPLOAD_MAX_BYTES} bytes" in str(too_large.value)
    # The certificate stays usable after a refusal, and the SDK reuses certificates (§3.3).
    url, _ = OssUtils.upload(model=MODEL, file_path=str(speech), api_key=KEY, upload_certificate=certificate)
    assert _sdk_transcribe(url).status_code == 200
    with pytest.raises(UploadFileException, match=r"AccessDenied.*overwritten"):
        OssUtils.upload(model=MODEL, file_path=str(speech), api_key=KEY, upload_certificate=certificate)
    # Nothing of the refused file was kept, and an object serves only the API key that uploaded it.
    refused = _sdk_transcribe(f"oss://{certificate['upload_dir']}/big.wav")
    assert (refused.status_code, refused.code) == (400, "InvalidURL")
    foreign = _sdk_transcribe(url, api_key=OTHER_KEY)
    assert (foreign.status_code, foreign.code) == (400, "InvalidURL")
    assert "not found" in foreign.message


def _data_uri(path: Path) -> str:
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()
