"""Rollouts with a fleet of real agents and a load generator on loopback.

A canary whose error rate is higher is rolled back on its own; a good one advances
through every step (membership only grows) and is promoted; an A/B split lands within
3 points of its setting and keeps a user on one version; a rollout survives a restart
of central.
"""

from __future__ import annotations

import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from shared.rollout import in_canary
from tests.integration.edge_harness import Agent, enroll_agent, point, publish
from tests.onnx_models import IR_VERSION, OPSET, linear_model
from tests.support import CentralProcess, api_ok, init_central, unique

FLEET_SIZE = 12
FAST_AGENT = {"telemetry_interval_seconds": 0.5, "sync_wait_seconds": 1.0}
BATCH_OF_TWO = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def failing_for_batches() -> bytes:
    """linear_model's signature, but a batch of more than one row fails at run time.

    (A warm-up with one row passes, so it loads; the field sees the errors.)
    """
    weights = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["Z"]),
            helper.make_node("Reshape", ["Z", "S"], ["Y"]),
        ],
        "fragile",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(weights, name="W"),
            numpy_helper.from_array(np.array([1, 1], dtype=np.int64), name="S"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return bytes(model.SerializeToString())


class Load:
    """Requests to every agent, round robin, from a few threads, until stopped."""

    def __init__(self, agents: list[Agent], model: str) -> None:
        self.agents, self.model = agents, model
        self.answers: Counter[str] = Counter()
        self.failures = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(4)]

    def _run(self, offset: int) -> None:
        for i in range(offset, 200_000, 4):
            if self._stop.is_set():
                return
            agent = self.agents[i % len(self.agents)]
            try:
                answer = agent.infer(self.model, BATCH_OF_TWO)
                self.answers[answer["model_version"]] += 1
            except (urllib.error.URLError, OSError):
                self.failures += 1
            time.sleep(0.005)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CentralProcess, str, list[Agent]]]:
    """A central judging rollouts every half second and a fleet of 12 running agents."""
    folder = tmp_path_factory.mktemp("rollouts")
    central = init_central(folder / "central", rollout_check_seconds=0.5)
    central.start()
    agents: list[Agent] = []
    try:
        fleet = unique("plant")
        api_ok(central, "POST", "/api/v1/fleets", 201, json={"name": fleet})
        for model in ("good", "bad", "split", "durable"):
            publish(central, model, "1.0.0", linear_model(1.0))
            point(central, model, "1.0.0")
            api_ok(
                central,
                "PUT",
                f"/api/v1/fleets/{fleet}/models/{model}",
                json={"alias": "production"},
            )
        agents = [enroll_agent(central, fleet, folder, **FAST_AGENT) for _ in range(FLEET_SIZE)]
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda a: a.start(), agents))
        for agent in agents:
            agent.wait_for(
                lambda s: len([x for x in s["slots"] if x["serving"]]) == 4,
                what="every model",
                timeout=60,
            )
        yield central, fleet, agents
    finally:
        for agent in agents:
            if agent.proc is not None:
                agent.stop()
        central.stop()


def _start(central: CentralProcess, fleet: str, model: str, **body: Any) -> dict[str, Any]:
    spec = {"model": model, "fleet": fleet, **body}
    return dict(api_ok(central, "POST", "/api/v1/rollouts", 201, json=spec))


def _status(central: CentralProcess, rollout_id: str) -> dict[str, Any]:
    return dict(api_ok(central, "GET", f"/api/v1/rollouts/{rollout_id}"))


def _wait_status(
    central: CentralProcess,
    rollout_id: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 60,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status = _status(central, rollout_id)
    while not check(status):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {status}"
        time.sleep(0.3)
        status = _status(central, rollout_id)
    return status


def _serving(agent: Agent, model: str) -> str | None:
    return agent.serving(model)


def test_canary_with_a_higher_error_rate_is_rolled_back(
    site: tuple[CentralProcess, str, list[Agent]],
) -> None:
    central, fleet, agents = site
    publish(central, "bad", "2.0.0", failing_for_batches())
    rollout = _start(
        central,
        fleet,
        "bad",
        candidate="2.0.0",
        steps=[50, 100],
        soak_seconds=30,
        rules={"min_requests": 20},
    )
    members = [a for a in agents if in_canary(rollout["id"], a.device_id, 50)]
    assert members, "no device in the 50% step (hash of ids)"
    for agent in members:
        agent.wait_for(
            lambda s: any(x["model"] == "bad" and x["serving"] == "2.0.0" for x in s["slots"]),
            what="the canary version",
        )
    for agent in set(agents) - set(members):
        assert _serving(agent, "bad") == "1.0.0"
    with Load(agents, "bad"):
        status = _wait_status(
            central,
            rollout["id"],
            lambda s: s["status"] != "running",
            what="the rollout to be judged",
        )
    assert status["status"] == "rolled_back"
    assert "max_error_rate_increase" in status["reason"]
    assert status["versions"]["2.0.0"]["errors"] > 0
    for agent in agents:
        agent.wait_for(
            lambda s: any(x["model"] == "bad" and x["serving"] == "1.0.0" for x in s["slots"]),
            what="back on the baseline",
        )
    alias = api_ok(central, "GET", "/api/v1/models/bad/aliases/production")
    assert alias["version"] == "1.0.0"
    kinds = [
        c["kind"] for c in api_ok(central, "GET", "/api/v1/changes?since=0&limit=1000")["items"]
    ]
    assert "rollout.rolled_back" in kinds


def test_good_canary_advances_through_every_step_and_is_promoted(
    site: tuple[CentralProcess, str, list[Agent]],
) -> None:
    central, fleet, agents = site
    publish(central, "good", "2.0.0", linear_model(2.0))
    rollout = _start(
        central,
        fleet,
        "good",
        candidate="2.0.0",
        steps=[50, 75, 100],
        soak_seconds=1,
        rules={"min_requests": 10, "max_p95_ratio": None},  # latency varies on a busy host
    )
    seen_members: list[set[str]] = []
    with Load(agents, "good") as load:
        deadline = time.monotonic() + 120
        status = _status(central, rollout["id"])
        while status["status"] == "running":
            assert time.monotonic() < deadline, status
            members = {a.device_id for a in agents if _serving(a, "good") == "2.0.0"}
            seen_members.append(members)
            time.sleep(0.3)
            status = _status(central, rollout["id"])
    assert status["status"] == "promoted", status
    assert load.failures == 0
    kinds = [e["kind"] for e in status["events"]]
    assert kinds == ["started", "advanced", "advanced", "promoted"]
    assert api_ok(central, "GET", "/api/v1/models/good/aliases/production")["version"] == "2.0.0"
    for agent in agents:
        agent.wait_for(
            lambda s: any(x["model"] == "good" and x["serving"] == "2.0.0" for x in s["slots"]),
            what="the promoted version",
        )
    # membership is monotone: a device in an earlier step stays in the later ones
    expected = [
        {a.device_id for a in agents if in_canary(rollout["id"], a.device_id, p)}
        for p in (50, 75, 100)
    ]
    assert expected[0] <= expected[1] <= expected[2] == {a.device_id for a in agents}
    for observed in seen_members:
        assert any(observed <= step for step in expected)


def test_ab_split_is_within_three_points_and_sticky(
    site: tuple[CentralProcess, str, list[Agent]],
) -> None:
    central, fleet, agents = site
    publish(central, "split", "2.0.0", linear_model(2.0))
    rollout = _start(
        central,
        fleet,
        "split",
        candidate="2.0.0",
        strategy="ab",
        split=10,
        sticky_header="X-User-Id",
        soak_seconds=3600,
        rules={"min_requests": 10**6},
    )
    agent = agents[0]
    agent.wait_for(
        lambda s: any(x["model"] == "split" and "2.0.0" in x["variants"] for x in s["slots"]),
        what="the candidate loaded beside",
    )
    counts: Counter[str] = Counter()
    for user in range(2000):
        answer = agent.infer_with_headers("split", {"X-User-Id": f"user-{user}"})
        counts[answer["model_version"]] += 1
    share = counts["2.0.0"] / 2000 * 100
    assert 7 <= share <= 13, counts
    first = {
        agent.infer_with_headers("split", {"X-User-Id": "alice"})["model_version"]
        for _ in range(20)
    }
    assert len(first) == 1
    api_ok(central, "POST", f"/api/v1/rollouts/{rollout['id']}/abort")
    agent.wait_for(
        lambda s: any(x["model"] == "split" and not x["variants"] for x in s["slots"]),
        what="the split to end",
    )


def test_rollout_continues_after_central_restarts(
    site: tuple[CentralProcess, str, list[Agent]],
    tmp_path: Path,
) -> None:
    central, fleet, agents = site
    publish(central, "durable", "2.0.0", linear_model(3.0))
    rollout = _start(
        central,
        fleet,
        "durable",
        candidate="2.0.0",
        steps=[50, 100],
        soak_seconds=2,
        rules={"min_requests": 5, "max_p95_ratio": None},
    )
    central.stop()
    central.start()
    assert _status(central, rollout["id"])["status"] == "running"
    with Load(agents, "durable"):
        status = _wait_status(
            central,
            rollout["id"],
            lambda s: s["status"] != "running",
            what="promotion after the restart",
            timeout=90,
        )
    assert status["status"] == "promoted"


POLICY = """
[stages.production]
approvals = 1
move_alias = "production"
"""


def test_promotion_goes_through_the_approval_policy_and_raises_webhooks(
    tmp_path: Path,
) -> None:
    from tests.integration.test_webhooks import Receiver, add_webhook

    central = init_central(tmp_path / "central", rollout_check_seconds=0.5)
    (central.data_dir / "policy.toml").write_text(POLICY)
    central.start()
    receiver = Receiver().start()
    agents: list[Agent] = []
    try:
        add_webhook(central, receiver.url, ["rollout.*"])
        fleet = unique("plant")
        api_ok(central, "POST", "/api/v1/fleets", 201, json={"name": fleet})
        publish(central, "gated", "1.0.0", linear_model(1.0))
        point(central, "gated", "1.0.0")
        api_ok(central, "PUT", f"/api/v1/fleets/{fleet}/models/gated", json={"alias": "production"})
        register_in = {
            "files": [{"path": "model.onnx", "digest": publish_blob(central)}],
            "version": "2.0.0",
            "stage": "staging",
        }
        api_ok(central, "POST", "/api/v1/models/gated/versions", 201, json=register_in)
        agents = [enroll_agent(central, fleet, tmp_path, **FAST_AGENT) for _ in range(2)]
        for agent in agents:
            agent.start()
        rollout = _start(
            central,
            fleet,
            "gated",
            candidate="2.0.0",
            steps=[100],
            soak_seconds=0.5,
            rules={"min_requests": 5, "max_p95_ratio": None},
        )
        with Load(agents, "gated"):
            status = _wait_status(
                central, rollout["id"], lambda s: s["status"] != "running", what="the last step"
            )
        assert status["status"] == "awaiting_approval", status
        assert (
            api_ok(central, "GET", "/api/v1/models/gated/aliases/production")["version"] == "1.0.0"
        )
        requests = api_ok(central, "GET", "/api/v1/requests?status=pending")["items"]
        (request,) = [r for r in requests if r["model"] == "gated"]
        approver = api_ok(
            central, "POST", "/api/v1/tokens", 201, json={"name": "anna", "role": "approver"}
        )["token"]
        api_ok(
            central,
            "POST",
            f"/api/v1/requests/{request['id']}/approve",
            json={"comment": "canary looked good"},
            token=approver,
        )
        status = _wait_status(
            central,
            rollout["id"],
            lambda s: s["status"] == "promoted",
            what="the promotion after approval",
        )
        assert (
            api_ok(central, "GET", "/api/v1/models/gated/aliases/production")["version"] == "2.0.0"
        )
        for agent in agents:
            agent.wait_for(
                lambda s: any(
                    x["model"] == "gated" and x["serving"] == "2.0.0" for x in s["slots"]
                ),
                what="the promoted version",
            )
        got = receiver.wait_for(
            lambda r: any(x.doc["event"] == "rollout.promoted" for x in r), "rollout webhooks"
        )
        events = [x.doc["event"] for x in got]
        assert events[:1] == ["rollout.started"] and "rollout.awaiting_approval" in events
        assert all(x.signature_ok for x in got)
    finally:
        receiver.stop()
        for agent in agents:
            if agent.proc is not None:
                agent.stop()
        central.stop()


def publish_blob(central: CentralProcess) -> str:
    from tests.support import put_blob

    return put_blob(central, linear_model(2.0))
