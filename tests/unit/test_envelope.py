"""Tests for shared.envelope: threshold signatures over canonical JSON."""

import copy
import json
from typing import Any

import pytest

from shared.canonical import canonical_json
from shared.envelope import (
    MAX_SIGNATURES,
    add_signature,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from shared.errors import FormatError, LengthError, UnsignedError
from shared.keys import PublicKey, SigningKey

SIGNED = {"_type": "fleet_state", "serial": 7, "models": {"resnet": "sha256:" + "a" * 64}}


@pytest.fixture(scope="module")
def signers() -> list[SigningKey]:
    return [SigningKey.generate() for _ in range(4)]


def _keys(signers: list[SigningKey]) -> dict[str, PublicKey]:
    return {k.keyid: k.public_key for k in signers}


def _verify(envelope: Any, signers: list[SigningKey], threshold: int = 2) -> dict[str, Any]:
    """Verify against a role of the first three keys."""
    return verify_envelope(
        envelope,
        keys=_keys(signers),
        keyids=[k.keyid for k in signers[:3]],
        threshold=threshold,
        role="targets",
    )


def test_sign_covers_canonical_json(signers: list[SigningKey]) -> None:
    env = sign_envelope(SIGNED, signers[:1])
    assert env["signed"] == SIGNED
    sig = bytes.fromhex(env["signatures"][0]["sig"])
    assert signers[0].public_key.verify(sig, canonical_json(SIGNED))


def test_sign_rejects_floats(signers: list[SigningKey]) -> None:
    with pytest.raises(FormatError):
        sign_envelope({"x": 0.5}, signers[:1])


def test_two_of_three(signers: list[SigningKey]) -> None:
    env = sign_envelope(SIGNED, signers[:2])
    assert _verify(env, signers) == SIGNED


def test_one_of_three_is_not_enough(signers: list[SigningKey]) -> None:
    env = sign_envelope(SIGNED, signers[:1])
    with pytest.raises(UnsignedError, match="signed by 1 of the required 2 keys for role targets"):
        _verify(env, signers)


def test_duplicate_signatures_counted_once(signers: list[SigningKey]) -> None:
    env = sign_envelope(SIGNED, signers[:1])
    env["signatures"] = env["signatures"] * 3
    with pytest.raises(UnsignedError, match="signed by 1 of"):
        _verify(env, signers)


def test_sign_envelope_signs_once_per_key(signers: list[SigningKey]) -> None:
    env = sign_envelope(SIGNED, [signers[0], signers[0]])
    assert len(env["signatures"]) == 1


def test_unauthorised_and_unknown_keys_ignored(signers: list[SigningKey]) -> None:
    stranger = SigningKey.generate()
    # signers[3] is known but not in the role; stranger is unknown altogether.
    env = sign_envelope(SIGNED, [signers[0], signers[3], stranger])
    with pytest.raises(UnsignedError, match="signed by 1 of"):
        _verify(env, signers)
    env = add_signature(env, signers[1])
    assert _verify(env, signers) == SIGNED


def test_flipped_byte_in_signed_content(signers: list[SigningKey]) -> None:
    env = sign_envelope(SIGNED, signers[:3])
    tampered = copy.deepcopy(env)
    tampered["signed"]["serial"] = 8
    with pytest.raises(UnsignedError, match="signed by 0 of"):
        _verify(tampered, signers)


def test_flipped_byte_in_serialised_envelope(signers: list[SigningKey]) -> None:
    raw = json.dumps(sign_envelope(SIGNED, signers[:3])).encode()
    index = raw.index(b"resnet")
    tampered = raw[:index] + b"R" + raw[index + 1 :]
    with pytest.raises(UnsignedError):
        _verify(parse_envelope(tampered), signers)


def test_flipped_byte_in_signature(signers: list[SigningKey]) -> None:
    env = sign_envelope(SIGNED, signers[:2])
    sig = env["signatures"][1]["sig"]
    env["signatures"][1]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    with pytest.raises(UnsignedError, match="signed by 1 of"):
        _verify(env, signers)


def test_signature_moved_to_other_keyid(signers: list[SigningKey]) -> None:
    env = sign_envelope(SIGNED, signers[:1])
    env["signatures"].append({"keyid": signers[1].keyid, "sig": env["signatures"][0]["sig"]})
    with pytest.raises(UnsignedError):
        _verify(env, signers)


def test_key_under_wrong_keyid_ignored(signers: list[SigningKey]) -> None:
    env = sign_envelope(SIGNED, signers[:2])
    keys = _keys(signers)
    keys[signers[1].keyid] = signers[0].public_key
    with pytest.raises(UnsignedError):
        verify_envelope(
            env, keys=keys, keyids=[k.keyid for k in signers[:3]], threshold=2, role="targets"
        )


def test_threshold_must_be_positive(signers: list[SigningKey]) -> None:
    with pytest.raises(ValueError):
        _verify(sign_envelope(SIGNED, signers[:1]), signers, threshold=0)


def test_add_signature_replaces_own(signers: list[SigningKey]) -> None:
    env = add_signature(add_signature(sign_envelope(SIGNED, []), signers[0]), signers[0])
    assert [s["keyid"] for s in env["signatures"]] == [signers[0].keyid]


def test_parse_bytes_round_trip(signers: list[SigningKey]) -> None:
    env = sign_envelope(SIGNED, signers[:2])
    assert parse_envelope(json.dumps(env).encode()) == env


GOOD_SIG = {"keyid": "a" * 64, "sig": "b" * 128}


@pytest.mark.parametrize(
    "env",
    [
        [],
        {},
        {"signed": {}},
        {"signed": {}, "signatures": [], "extra": 1},
        {"signed": [], "signatures": []},
        {"signed": {}, "signatures": {}},
        {"signed": {}, "signatures": ["x"]},
        {"signed": {}, "signatures": [{"keyid": "a" * 64}]},
        {"signed": {}, "signatures": [{**GOOD_SIG, "keyid": "A" * 64}]},
        {"signed": {}, "signatures": [{**GOOD_SIG, "sig": "b" * 127}]},
        {"signed": {}, "signatures": [{**GOOD_SIG, "sig": 5}]},
        {"signed": {}, "signatures": [{**GOOD_SIG, "extra": 1}]},
        {"signed": {}, "signatures": [GOOD_SIG] * (MAX_SIGNATURES + 1)},
    ],
)
def test_parse_rejects_bad_shapes(env: Any) -> None:
    with pytest.raises(FormatError):
        parse_envelope(env)


def test_parse_rejects_duplicate_json_keys() -> None:
    with pytest.raises(FormatError):
        parse_envelope(b'{"signed":{"a":1,"a":2},"signatures":[]}')


def test_parse_size_limit() -> None:
    with pytest.raises(LengthError):
        parse_envelope(b'{"signed":{},"signatures":[]}', max_bytes=10)


def test_floats_in_signed_cannot_verify(signers: list[SigningKey]) -> None:
    env = {"signed": {"x": 1.5}, "signatures": []}
    with pytest.raises(FormatError):
        _verify(env, signers)


def test_parse_accepts_bytearray(signers: list[SigningKey]) -> None:
    env = sign_envelope(SIGNED, signers[:1])
    assert parse_envelope(bytearray(json.dumps(env).encode())) == env
