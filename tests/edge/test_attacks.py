"""Attacks on a running edge agent, one simulator setting each (DESIGN.md section 2).

Every case starts from an agent that serves version 1.0.0 of one model from a good
fleet state, applies one attack through ``CentralSimulator`` and checks that:
(a) the exact error appears in ``/skiff/status`` and in a report central received,
(b) the trusted serial and root and the version served are what they should be, and
(c) inference still answers with version 1.0.0's output.
A state whose manifest or blob fails verification may or may not stay trusted (TUF keeps
it; docs/sync.md step 5 caches it only once everything verified), but clearing the attack
must then let the agent install 2.0.0. A model that fails to load comes with a state
that verified completely, so that state is trusted and 2.0.0 is marked bad.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from shared.codec import decompress
from shared.digest import sha256_digest
from shared.fleet import ModelTarget, envelope_size
from shared.keys import SigningKey
from shared.timeutil import format_time
from tests.edge.conftest import wait_for
from tests.simulator import (
    PAST,
    AgentPool,
    AgentProcess,
    CentralSimulator,
    Faults,
    broken_model,
    linear_model,
    nan_model,
    serving,
    slot_of,
)

MODEL = "demo"
V1, V2 = "1.0.0", "2.0.0"
V1_OUT, V2_OUT = [6.0], [12.0]  # linear_model(1.0) and linear_model(2.0) on [1, 1, 1]


async def serving_v1(
    sim: CentralSimulator, agents: AgentPool
) -> tuple[AgentProcess, dict[str, Any]]:
    """An agent that serves 1.0.0 from a good state; its status then."""
    sim.publish(MODEL, V1, linear_model(1.0))
    sim.assign(MODEL, V1)
    agent = await agents.new(sim).start()
    status = await agent.wait_until(lambda s: serving(s, MODEL) == V1, what="1.0.0 served")
    assert status["fleet_serial"] == sim.state.serial
    assert status["root_version"] == 1
    assert status["errors"] == []
    assert await agent.infer(MODEL) == V1_OUT
    return agent, status


@dataclass(frozen=True)
class Expected:
    """An error entry the agent must show: ``where`` and the exact message (or its start)."""

    where: str
    error: str
    prefix: bool = False

    def matches(self, entry: dict[str, str]) -> bool:
        if entry.get("where") != self.where:
            return False
        text = entry.get("error", "")
        return text.startswith(self.error) if self.prefix else text == self.error


def shows(expected: Expected) -> Callable[[dict[str, Any]], bool]:
    return lambda status: any(expected.matches(e) for e in status["errors"])


# -- the attacks: each applies one setting and says which error must follow -------------------


def rollback(sim: CentralSimulator) -> Expected:
    trusted = sim.state.serial
    sim.state.serial -= 1
    return Expected("verify", f"Expected serial >= {trusted}, got {trusted - 1}")


def replay_equal_serial(sim: CentralSimulator) -> Expected:
    sim.publish(MODEL, V2, linear_model(2.0))
    sim.state.models[MODEL] = sim.target(MODEL, V2)  # new content, same serial
    return Expected(
        "verify",
        f"Fleet state serial {sim.state.serial} was re-signed with different content "
        "(an equal serial must be byte-identical)",
    )


def freeze(sim: CentralSimulator) -> Expected:
    sim.publish(MODEL, V2, linear_model(2.0))
    sim.assign(MODEL, V2)
    sim.state.expires = PAST
    return Expected("verify", f"Fleet state expired at {format_time(PAST)}")


def unsigned_state(sim: CentralSimulator) -> Expected:
    sim.publish(MODEL, V2, linear_model(2.0))
    sim.assign(MODEL, V2)
    sim.signers["targets"].clear()
    return Expected("verify", "signed by 0 of the required 1 keys for role targets")


def unauthorised_key(sim: CentralSimulator) -> Expected:
    sim.publish(MODEL, V2, linear_model(2.0))
    sim.assign(MODEL, V2)
    sim.signers["targets"][:] = [SigningKey.generate()]
    return Expected("verify", "signed by 0 of the required 1 keys for role targets")


def root_not_signed_by_old(sim: CentralSimulator) -> Expected:
    sim.rotate_root(sign_with_old=False, new_targets=True)
    sim.publish(MODEL, V2, linear_model(2.0))
    sim.assign(MODEL, V2)
    return Expected("verify", "signed by 0 of the required 1 keys for role root")


def root_not_signed_by_new(sim: CentralSimulator) -> Expected:
    sim.rotate_root(sign_with_new=False, new_targets=True)
    sim.publish(MODEL, V2, linear_model(2.0))
    sim.assign(MODEL, V2)
    return Expected("verify", "signed by 0 of the required 1 keys for role root")


def mix_and_match_older_manifest(sim: CentralSimulator) -> Expected:
    v1, v2 = sim.versions[(MODEL, V1)], sim.publish(MODEL, V2, linear_model(2.0))
    sim.assign(MODEL, V2)
    sim.manifest_overrides[v2.digest] = sim.manifest_envelope(MODEL, V1)
    return Expected(
        f"verify {MODEL}@{V2}", f"manifest of {MODEL}: expected {v2.digest}, got {v1.digest}"
    )


def mix_and_match_other_model(sim: CentralSimulator) -> Expected:
    v2 = sim.publish(MODEL, V2, linear_model(2.0))
    other = sim.publish("other", V2, linear_model(5.0))
    sim.assign(MODEL, V2)
    sim.manifest_overrides[v2.digest] = sim.manifest_envelope("other", V2)
    return Expected(
        f"verify {MODEL}@{V2}", f"manifest of {MODEL}: expected {v2.digest}, got {other.digest}"
    )


def state_names_other_models_manifest(sim: CentralSimulator) -> Expected:
    sim.publish(MODEL, V2, linear_model(2.0))
    other = sim.publish("other", V2, linear_model(5.0))
    size = envelope_size(sim.manifest_envelope("other", V2))
    sim.state.models[MODEL] = ModelTarget(V2, "production", other.digest, size)
    sim.state.serial += 1
    return Expected(
        f"verify {MODEL}@{V2}", f"expected the manifest of {MODEL} {V2}, got other {V2}"
    )


def tampered_blob(sim: CentralSimulator) -> Expected:
    entry = sim.publish(MODEL, V2, linear_model(2.0)).entry()
    served = sim.tamper_blob(entry.digest)
    sim.assign(MODEL, V2)
    return Expected(
        f"download {MODEL}@{V2}",
        f"{entry.path}: expected {entry.digest}, got "
        + sha256_digest(decompress(served, entry.size)),
    )


def endless_data(sim: CentralSimulator) -> Expected:
    entry = sim.publish(MODEL, V2, linear_model(2.0)).entry()
    sim.extra_bytes(entry.digest)  # 1 GiB more, no Content-Length
    sim.assign(MODEL, V2)
    return Expected(
        f"download {MODEL}@{V2}", f"the server sent more than the signed {entry.zsize} bytes"
    )


def endless_data_announced(sim: CentralSimulator) -> Expected:
    entry = sim.publish(MODEL, V2, linear_model(2.0)).entry()
    sim.extra_bytes(entry.digest, 10_000, announce=True)
    sim.assign(MODEL, V2)
    return Expected(
        f"download {MODEL}@{V2}",
        f"expected at most {entry.zsize} more bytes, the server announces {entry.zsize + 10_000}",
    )


def model_fails_to_load(sim: CentralSimulator) -> Expected:
    sim.publish(MODEL, V2, broken_model())
    sim.assign(MODEL, V2)
    return Expected(
        f"load {MODEL}@{V2}", f"model {MODEL} version {V2} does not load: ", prefix=True
    )


def model_outputs_nan(sim: CentralSimulator) -> Expected:
    sim.publish(MODEL, V2, nan_model())
    sim.assign(MODEL, V2)
    return Expected(
        f"load {MODEL}@{V2}",
        f"model {MODEL} version {V2} fails its health check: output Y is not finite",
    )


def clear_overrides(sim: CentralSimulator) -> None:
    sim.manifest_overrides.clear()


def restore_v2_blob(sim: CentralSimulator) -> None:
    sim.restore_blob(sim.versions[(MODEL, V2)].entry().digest)


@dataclass(frozen=True)
class Attack:
    """One named case: the setting, whether the state may advance, and how to end it."""

    name: str
    apply: Callable[[CentralSimulator], Expected]
    serial_advances: bool | None = False  # None: the new state may be trusted or not
    bad_version: bool = False  # 2.0.0 must be recorded and reported as bad
    blob_attack: bool = False  # nothing of 2.0.0 may enter the cache
    heal: Callable[[CentralSimulator], None] | None = None  # then 2.0.0 must install


ATTACKS = [
    Attack("rollback_lower_serial", rollback),
    Attack("replay_equal_serial_other_content", replay_equal_serial),
    Attack("freeze_expired_state", freeze),
    Attack("unsigned_state", unsigned_state),
    Attack("state_signed_by_unauthorised_key", unauthorised_key),
    Attack("root_rotation_not_signed_by_old_root", root_not_signed_by_old),
    Attack("root_rotation_not_signed_by_new_root", root_not_signed_by_new),
    Attack(
        "mix_and_match_older_manifest",
        mix_and_match_older_manifest,
        serial_advances=None,
        heal=clear_overrides,
    ),
    Attack(
        "mix_and_match_other_models_manifest",
        mix_and_match_other_model,
        serial_advances=None,
        heal=clear_overrides,
    ),
    Attack(
        "state_names_other_models_manifest",
        state_names_other_models_manifest,
        serial_advances=None,
    ),
    Attack(
        "tampered_blob",
        tampered_blob,
        serial_advances=None,
        blob_attack=True,
        heal=restore_v2_blob,
    ),
    Attack(
        "endless_data", endless_data, serial_advances=None, blob_attack=True, heal=restore_v2_blob
    ),
    Attack(
        "endless_data_announced",
        endless_data_announced,
        serial_advances=None,
        blob_attack=True,
        heal=restore_v2_blob,
    ),
    Attack("model_fails_to_load", model_fails_to_load, serial_advances=True, bad_version=True),
    Attack("model_outputs_nan", model_outputs_nan, serial_advances=True, bad_version=True),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
async def test_attack(attack: Attack, sim: CentralSimulator, agents: AgentPool) -> None:
    agent, before = await serving_v1(sim, agents)

    expected = attack.apply(sim)

    # (a) the exact error, in the status and in a report to central
    status = await agent.wait_until(shows(expected), what=f"error {expected}")
    await wait_for(
        lambda: any(expected.matches(e) for r in sim.reports for e in r.get("errors", [])),
        f"a report with {expected}",
    )
    # (b) trusted and served state
    assert serving(status, MODEL) == V1
    assert status["root_version"] == 1
    if attack.serial_advances is None:
        assert status["fleet_serial"] in (before["fleet_serial"], sim.state.serial)
    elif attack.serial_advances:
        assert status["fleet_serial"] == sim.state.serial
    else:
        assert status["fleet_serial"] == before["fleet_serial"]
        # a rejected state is never acted on: nothing it names is even downloaded
        if (MODEL, V2) in sim.versions:
            v2_blobs = sim.blobs_of(MODEL, V2)
            assert not [r for r in sim.requests if r.path.rsplit("/", 1)[-1] in v2_blobs]
    # (c) inference answers with 1.0.0
    assert await agent.infer(MODEL) == V1_OUT

    if attack.bad_version:
        assert slot_of(status, MODEL)["bad_versions"][V2].startswith(expected.error)
        await wait_for(
            lambda: any(V2 in r.get("bad_versions", {}).get(MODEL, {}) for r in sim.reports),
            "a report naming 2.0.0 as bad",
        )
    if attack.blob_attack:
        digest = sim.versions[(MODEL, V2)].entry().digest
        assert not agent.blob_file(digest).exists()
        assert agent.partial_files() == []
        blob_requests = [r for r in sim.requests if r.path.endswith(digest)]
        assert blob_requests, "the agent never asked for the blob"
        # endless data (1 GiB offered): the agent hangs up right after the signed size; the
        # simulator may still have written a few MiB into the socket buffers by then
        assert all(r.sent < 64 * 1024 * 1024 for r in blob_requests), [
            r.sent for r in blob_requests
        ]

    if attack.heal is not None:
        attack.heal(sim)
        status = await agent.wait_until(
            lambda s: serving(s, MODEL) == V2, timeout=6.0, what="2.0.0 served once the attack ends"
        )
        assert await agent.infer(MODEL) == V2_OUT


@pytest.mark.parametrize("rotate", ["root_and_targets_keys", "targets_key_only"])
async def test_root_rotation_signed_by_old_and_new_is_followed(
    rotate: str, sim: CentralSimulator, agents: AgentPool
) -> None:
    agent, _ = await serving_v1(sim, agents)
    old_targets = list(sim.signers["targets"])
    if rotate == "root_and_targets_keys":
        sim.rotate_root(sign_with_old=True, sign_with_new=True, new_targets=True)
    else:
        sim.rotate_targets()
    assert sim.signers["targets"] != old_targets

    await agent.wait_until(lambda s: s["root_version"] == 2, what="root version 2")
    sim.publish(MODEL, V2, linear_model(2.0))
    serial = sim.assign(MODEL, V2)  # signed by the new targets key only
    status = await agent.wait_until(lambda s: serving(s, MODEL) == V2, what="2.0.0 served")

    assert status["fleet_serial"] == serial
    assert status["errors"] == []
    assert await agent.infer(MODEL) == V2_OUT
    await wait_for(
        lambda: any(
            r.get("root_version") == 2 and r.get("fleet_serial") == serial for r in sim.reports
        ),
        "a report with root version 2",
    )
    # the rotation survives a restart: the cached chain is replayed from the provisioned root
    await agent.stop()
    await agent.start()
    status = await agent.wait_until(lambda s: serving(s, MODEL) == V2, what="2.0.0 after restart")
    assert status["root_version"] == 2
    assert status["errors"] == []


async def test_flaky_central_keeps_serving_then_installs_v2(
    sim: CentralSimulator, agents: AgentPool
) -> None:
    agent, before = await serving_v1(sim, agents)
    sim.faults = Faults(status=503)
    await wait_for(
        lambda: sum(r.status == 503 and r.path == "/api/v1/sync" for r in sim.requests) >= 2,
        "two syncs answered 503",
    )
    sim.publish(MODEL, V2, linear_model(2.0))
    serial = sim.assign(MODEL, V2)  # news the agent cannot learn while central fails
    await wait_for(
        lambda: sum(r.status == 503 and r.path == "/api/v1/sync" for r in sim.requests) >= 4,
        "two more syncs answered 503",
    )
    status = await agent.wait_until(lambda s: not s["connected"], what="connected false")
    assert serving(status, MODEL) == V1
    assert status["fleet_serial"] == before["fleet_serial"]
    assert await agent.infer(MODEL) == V1_OUT

    sim.faults = Faults(reset_mid_body=True, only="/api/v1/sync")
    await wait_for(
        lambda: sum(r.outcome == "reset" and r.path == "/api/v1/sync" for r in sim.requests) >= 2,
        "two sync answers cut mid-body",
    )
    status = await agent.status()
    assert serving(status, MODEL) == V1
    assert status["fleet_serial"] == before["fleet_serial"]

    sim.faults = Faults(reset_mid_body=True, only="/api/v1/blobs/")
    await wait_for(
        lambda: sum(r.outcome == "reset" and "/blobs/" in r.path for r in sim.requests) >= 2,
        "two blob downloads cut mid-body",
    )
    status = await agent.status()
    assert serving(status, MODEL) == V1
    assert await agent.infer(MODEL) == V1_OUT

    sim.faults = Faults()
    status = await agent.wait_until(lambda s: serving(s, MODEL) == V2, what="2.0.0 served")
    assert status["fleet_serial"] == serial
    assert status["connected"] is True
    assert status["errors"] == []
    assert await agent.infer(MODEL) == V2_OUT


async def test_report_follows_the_documented_wire_format(
    sim: CentralSimulator, agents: AgentPool
) -> None:
    """docs/sync.md, "Reports": what central receives after a rejected version."""
    agent, _ = await serving_v1(sim, agents)
    expected = model_fails_to_load(sim)
    await agent.wait_until(shows(expected), what=f"error {expected}")
    await wait_for(
        lambda: any(V2 in r.get("bad_versions", {}).get(MODEL, {}) for r in sim.reports),
        "a report naming 2.0.0 as bad",
    )
    report = next(r for r in reversed(sim.reports) if r.get("bad_versions"))

    assert report["serving"] == {MODEL: V1}
    assert report["bad_versions"][MODEL][V2].startswith(expected.error)
    assert report["fleet_serial"] == sim.state.serial
    assert isinstance(report["cursor"], int)
    assert isinstance(report["agent_version"], str)
    assert isinstance(report["previous"], dict)
    errors = report["errors"]
    assert errors, "the rejected version is not among the reported errors"
    assert all(set(e) == {"at", "where", "error"} for e in errors), f"unexpected shape: {errors}"
