"""Tests for shared.keys."""

import hashlib
import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import ConflictError, FormatError
from shared.keys import PublicKey, SigningKey, load_signing_key, save_signing_key


def test_sign_and_verify() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"payload")
    assert len(sig) == 64
    assert key.public_key.verify(sig, b"payload")
    assert not key.public_key.verify(sig, b"payloaD")
    assert not key.public_key.verify(sig[:-1], b"payload")
    assert not SigningKey.generate().public_key.verify(sig, b"payload")


def test_keyid_is_sha256_of_raw_public_key() -> None:
    key = SigningKey.generate()
    assert key.keyid == hashlib.sha256(key.public_key.raw).hexdigest()
    assert key.public_key.keyid == key.keyid


def test_public_key_dict_round_trip() -> None:
    public = SigningKey.generate().public_key
    d = public.to_dict()
    assert d == {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": public.raw.hex()}}
    assert PublicKey.from_dict(d) == public


@pytest.mark.parametrize(
    "d",
    [
        {},
        {"keytype": "rsa", "scheme": "ed25519", "keyval": {"public": "00" * 32}},
        {"keytype": "ed25519", "scheme": "rsassa-pss", "keyval": {"public": "00" * 32}},
        {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "00" * 31}},
        {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "AB" * 32}},
        {"keytype": "ed25519", "scheme": "ed25519", "keyval": "00" * 32},
        {"keytype": "ed25519", "scheme": "ed25519"},
        ["not", "a", "dict"],
    ],
)
def test_public_key_from_dict_rejects(d: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        PublicKey.from_dict(d)


def test_public_key_wrong_length() -> None:
    with pytest.raises(FormatError):
        PublicKey(b"\0" * 31)


def test_pem_round_trip() -> None:
    key = SigningKey.generate()
    pem = key.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    again = SigningKey.from_pem(pem)
    assert again.keyid == key.keyid
    assert key.public_key.verify(again.sign(b"m"), b"m")


def test_from_pem_rejects_other_keys() -> None:
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(FormatError, match="Ed25519"):
        SigningKey.from_pem(other)
    with pytest.raises(FormatError):
        SigningKey.from_pem(b"garbage")


def test_repr_hides_key_material() -> None:
    key = SigningKey.generate()
    assert repr(key) == f"SigningKey(keyid={key.keyid!r})"


def test_save_mode_0600_and_refuses_second_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "root.pem"
    key = SigningKey.generate()
    with caplog.at_level(logging.DEBUG):
        save_signing_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key(path).keyid == key.keyid
    pem_body = key.to_pem().decode().splitlines()[1]
    assert pem_body not in caplog.text

    with pytest.raises(ConflictError):
        save_signing_key(path, SigningKey.generate())
    assert load_signing_key(path).keyid == key.keyid


def test_save_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "targets.pem"
    save_signing_key(path, SigningKey.generate())
    new = SigningKey.generate()
    save_signing_key(path, new, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key(path).keyid == new.keyid
    assert [p.name for p in tmp_path.iterdir()] == ["targets.pem"]


def test_load_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(FormatError):
        load_signing_key(path)
