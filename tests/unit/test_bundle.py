"""Tests for shared.bundle: a real round trip, and hostile tar files rejected unread."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from shared.bundle import BUNDLE_FORMAT, MAX_JSON_MEMBER, BundleReader, write_bundle
from shared.canonical import canonical_json
from shared.errors import FormatError, InvalidInputError, LengthError
from shared.fleet import BlobVerifier, TrustedState
from tests.unit.test_fleet import FLEET, REF, REF_TEXT, FleetBuilder

HEX = "ab" * 32


@pytest.fixture
def builder() -> FleetBuilder:
    """Two models (one of two files), and a rotation of the targets key."""
    b = FleetBuilder()
    b.rotate_targets()
    b.add_version("demo-mul", "1.1.0", {"model.onnx": b"\1" * 70_000, "vocab.txt": b"a b c"})
    b.add_version("demo-add", "2.0.0")
    return b


def _write(builder: FleetBuilder, tmp_path: Path, out: Any = None) -> Path:
    stored = tmp_path / "blobs"
    stored.mkdir(exist_ok=True)
    blobs = []
    for digest, blob in builder.blobs.items():
        path = stored / f"{digest[7:]}.zst"
        path.write_bytes(blob.packed)
        blobs.append((digest, path))
    path = tmp_path / "fleet.skiff"
    with open(path, "wb") as f:
        write_bundle(
            out or f,
            fleet=FLEET,
            created_at=REF_TEXT,
            roots=list(reversed(builder.root_envelopes)),
            fleet_state=builder.state_envelope(),
            manifests=builder.manifests,
            metadata=builder.metadata,
            blobs=blobs + blobs[:1],
        )
    return path


@pytest.fixture
def bundle(builder: FleetBuilder, tmp_path: Path) -> Path:
    return _write(builder, tmp_path)


def _chunks(stream: BinaryIO, size: int = 4096) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk


def test_round_trip_verifies(builder: FleetBuilder, bundle: Path) -> None:
    with BundleReader.open(bundle) as reader:
        assert reader.index == {"format": BUNDLE_FORMAT, "fleet": FLEET, "created_at": REF_TEXT}
        roots = reader.roots()
        assert roots == builder.root_envelopes
        trusted = TrustedState(roots[0], fleet=FLEET, reference_time=REF)
        for envelope in roots[1:]:
            trusted.update_root(envelope)
        state = trusted.update_fleet_state(reader.fleet_state())
        manifests, metadata = reader.manifests(), reader.metadata()
        assert manifests == builder.manifests
        assert reader.blob_digests() == set(builder.blobs)
        for model, target in state.models.items():
            manifest = trusted.verify_manifest(model, manifests[target.manifest_digest])
            trusted.verify_metadata(manifest, metadata[target.manifest_digest])
            for entry in manifest.files:
                stream, size = reader.open_blob(entry.digest)
                assert size == entry.zsize
                verifier = BlobVerifier(entry)
                with stream:
                    out = b"".join(verifier.feed(c) for c in _chunks(stream))
                verifier.finish()
                assert out == builder.blobs[entry.digest].data


def test_members_in_documented_order(bundle: Path) -> None:
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    kinds = [n.split("/")[0] for n in names]
    assert kinds == [
        "skiff-bundle.json",
        "roots",
        "roots",
        "fleet_state.json",
        *["manifests"] * 2,
        *["metadata"] * 2,
        *["blobs"] * 3,
    ]
    assert names[1:3] == ["roots/1.json", "roots/2.json"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}


def _subdir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def test_same_content_same_bytes(builder: FleetBuilder, tmp_path: Path) -> None:
    first = _write(builder, _subdir(tmp_path, "a"))
    second = _write(builder, _subdir(tmp_path, "b"))
    assert first.read_bytes() == second.read_bytes()


class _WriteOnly:
    """A pipe-like output: no seek, no tell."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def test_writes_to_a_stream(builder: FleetBuilder, bundle: Path, tmp_path: Path) -> None:
    out = _WriteOnly()
    _write(builder, _subdir(tmp_path, "s"), out)
    assert bytes(out.data) == bundle.read_bytes()


def test_metadata_may_hold_floats(builder: FleetBuilder, bundle: Path) -> None:
    with BundleReader.open(bundle) as reader:
        metadata = reader.metadata()
    assert {m["metrics"]["accuracy"] for m in metadata.values()} == {0.91}


@pytest.mark.parametrize(
    "changes",
    [
        {"manifests": {"sha256:abc": {}}},
        {"metadata": {"md5:" + HEX: {}}},
        {"blobs": [("sha256:" + HEX.upper(), Path("x"))]},
        {"roots": [{"signed": {"version": 0}, "signatures": []}]},
        {"roots": [{"signed": {"version": 1}}, {"signed": {"version": 1}}]},
    ],
    ids=["short digest", "md5", "uppercase hex", "root version 0", "root version twice"],
)
def test_write_rejects(changes: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "fleet": FLEET,
        "created_at": REF_TEXT,
        "roots": [],
        "fleet_state": {},
        "manifests": {},
        "metadata": {},
        "blobs": [],
    }
    with pytest.raises(InvalidInputError):
        write_bundle(io.BytesIO(), **{**args, **changes})


def test_open_blob_unknown_digest(bundle: Path) -> None:
    with BundleReader.open(bundle) as reader:
        with pytest.raises(FormatError, match=f"no member blobs/{HEX}.zst"):
            reader.open_blob("sha256:" + HEX)
        with pytest.raises(InvalidInputError):
            reader.open_blob(HEX)


# Hostile bundles: rebuilt member by member from a real one, then edited.

Member = tuple[tarfile.TarInfo, bytes]


def _members(bundle: Path) -> list[Member]:
    with tarfile.open(bundle) as tar:
        result = []
        for info in tar.getmembers():
            f = tar.extractfile(info)
            assert f is not None
            result.append((info, f.read()))
    return result


def _file(name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, b""


def _replace(name: str, new: Member) -> Callable[[list[Member]], list[Member]]:
    return lambda ms: [new if info.name == name else (info, data) for info, data in ms]


def _drop(name: str) -> Callable[[list[Member]], list[Member]]:
    return lambda ms: [(info, data) for info, data in ms if info.name != name]


def _add(new: Member) -> Callable[[list[Member]], list[Member]]:
    return lambda ms: [*ms, new]


def _index(**changes: Any) -> Member:
    index = {"format": BUNDLE_FORMAT, "fleet": FLEET, "created_at": REF_TEXT, **changes}
    return _file("skiff-bundle.json", canonical_json(index))


def _pax_bomb(ms: list[Member]) -> list[Member]:
    info, data = _file("fleet_state.json", b"{}")
    info.pax_headers = {"comment": "x" * (2 << 20)}
    return [*ms[:1], (info, data)]


HOSTILE: dict[str, tuple[Callable[[list[Member]], list[Member]], str]] = {
    "symlink fleet state": (
        _replace("fleet_state.json", _special("fleet_state.json", tarfile.SYMTYPE, "/etc/passwd")),
        "fleet_state.json' is not a regular file",
    ),
    "hard link": (
        _add(_special(f"blobs/{HEX}.zst", tarfile.LNKTYPE, "fleet_state.json")),
        "is not a regular file",
    ),
    "directory": (_add(_special("roots", tarfile.DIRTYPE)), "'roots' is not a regular file"),
    "fifo": (_add(_special(f"blobs/{HEX}.zst", tarfile.FIFOTYPE)), "is not a regular file"),
    "../evil": (_add(_file("../evil", b"x")), "unexpected bundle member name '../evil'"),
    "absolute path": (_add(_file("/etc/cron.d/x", b"x")), "unexpected bundle member name"),
    "nested traversal": (
        _add(_file(f"blobs/../{HEX}.zst", b"x")),
        "unexpected bundle member name",
    ),
    "unknown member": (_add(_file("README.txt", b"hi")), "unexpected bundle member name"),
    "root number 0": (_add(_file("roots/0.json", b"{}")), "'roots/0.json'"),
    "root number with leading zero": (_add(_file("roots/01.json", b"{}")), "'roots/01.json'"),
    "root number not an int": (_add(_file("roots/x.json", b"{}")), "'roots/x.json'"),
    "uppercase hex": (_add(_file(f"manifests/{HEX.upper()}.json", b"{}")), "unexpected"),
    "short hex": (_add(_file(f"metadata/{HEX[:63]}.json", b"{}")), "unexpected"),
    "blob with a json name": (_add(_file(f"blobs/{HEX}.json", b"{}")), "unexpected"),
    "duplicate member": (
        _add(_file("fleet_state.json", b"{}")),
        "fleet_state.json appears twice",
    ),
    "oversize JSON member": (
        _add(_file(f"metadata/{HEX}.json", b" " * (MAX_JSON_MEMBER + 1))),
        f"metadata/{HEX}.json: expected at most {MAX_JSON_MEMBER} bytes",
    ),
    "missing fleet_state.json": (_drop("fleet_state.json"), "no member fleet_state.json"),
    "missing skiff-bundle.json": (_drop("skiff-bundle.json"), "no member skiff-bundle.json"),
    "wrong format": (
        _replace("skiff-bundle.json", _index(format="skiff-bundle/2")),
        "skiff-bundle.json: expected format 'skiff-bundle/1', got 'skiff-bundle/2'",
    ),
    "index without fleet": (
        _replace("skiff-bundle.json", _index(fleet=None)),
        "skiff-bundle.json: expected a 'fleet' string",
    ),
    "index not JSON": (
        _replace("skiff-bundle.json", _file("skiff-bundle.json", b"{")),
        "bundle member skiff-bundle.json: invalid JSON",
    ),
    "index not an object": (
        _replace("skiff-bundle.json", _file("skiff-bundle.json", b"[]")),
        "skiff-bundle.json: expected a JSON object",
    ),
    "huge pax header": (_pax_bomb, "tar header of 2097664 bytes exceeds 1048576"),
}


def _rebuild(bundle: Path, edit: Callable[[list[Member]], list[Member]]) -> Path:
    hostile = bundle.with_name("hostile.skiff")
    with tarfile.open(hostile, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in edit(_members(bundle)):
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return hostile


@pytest.mark.parametrize(("edit", "message"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_bundles_rejected(
    bundle: Path, edit: Callable[[list[Member]], list[Member]], message: str
) -> None:
    hostile = _rebuild(bundle, edit)
    with pytest.raises(FormatError) as info:
        BundleReader.open(hostile)
    assert message in str(info.value)


def test_unedited_rebuild_is_accepted(bundle: Path) -> None:
    with BundleReader.open(_rebuild(bundle, lambda ms: ms)) as reader:
        assert reader.fleet_state()["signed"]["fleet"] == FLEET


def test_smaller_json_cap(bundle: Path) -> None:
    with pytest.raises(FormatError, match=r"roots/1\.json: expected at most 100 bytes"):
        BundleReader.open(bundle, max_json_bytes=100)


DOCUMENTS = {
    "roots/1.json": BundleReader.roots,
    "fleet_state.json": BundleReader.fleet_state,
    f"manifests/{HEX}.json": BundleReader.manifests,
    f"metadata/{HEX}.json": BundleReader.metadata,
}


@pytest.mark.parametrize(("member", "read"), DOCUMENTS.items(), ids=DOCUMENTS.keys())
def test_documents_not_objects_rejected_when_read(
    bundle: Path, member: str, read: Callable[[BundleReader], Any]
) -> None:
    edit = _add if HEX in member else lambda m: _replace(m[0].name, m)
    hostile = _rebuild(bundle, edit(_file(member, b"[1]")))
    message = f"bundle member {re.escape(member)}: expected a JSON object"
    with BundleReader.open(hostile) as reader, pytest.raises(FormatError, match=message):
        read(reader)


@pytest.mark.parametrize(
    "data",
    [b"", b"not a tar file at all" * 100, b"\0" * 10240],
    ids=["empty", "garbage", "only zero blocks"],
)
def test_not_a_tar(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.skiff"
    path.write_bytes(data)
    with pytest.raises(FormatError):
        BundleReader.open(path)


def test_truncated_bundle(bundle: Path) -> None:
    data = bundle.read_bytes()
    last_blob = max(m.offset_data for m, _ in _members(bundle))
    bundle.write_bytes(data[: last_blob + 10])
    with pytest.raises(FormatError, match="is truncated"):
        BundleReader.open(bundle)


def test_blob_member_larger_than_signed(builder: FleetBuilder, bundle: Path) -> None:
    digest = next(iter(builder.blobs))
    name = f"blobs/{digest[7:]}.zst"
    padded = builder.blobs[digest].packed + b"\0" * 100
    hostile = _rebuild(bundle, _replace(name, _file(name, padded)))
    with BundleReader.open(hostile) as reader:
        stream, size = reader.open_blob(digest)
        with stream:
            verifier = BlobVerifier(builder.blobs[digest].entry)
            assert size > verifier.expected.zsize
            with pytest.raises(LengthError, match="compressed bytes"):
                verifier.feed(stream.read())
