"""Aliases: set, resolve, history, rollback and delete."""

from __future__ import annotations

from tests.support import CentralProcess, api, api_ok, register, unique


def _alias_path(model: str, alias: str) -> str:
    return f"/api/v1/models/{model}/aliases/{alias}"


def _model_with_versions(central: CentralProcess, *versions: str) -> tuple[str, dict[str, dict]]:
    model = unique("alias")
    records = {v: register(central, model, v) for v in versions}
    return model, records


def _set(central: CentralProcess, model: str, alias: str, version: str) -> dict[str, object]:
    record: dict[str, object] = api_ok(
        central, "PUT", _alias_path(model, alias), json={"version": version}
    )
    return record


def test_set_get_and_resolve_an_alias(central_module: CentralProcess) -> None:
    model, versions = _model_with_versions(central_module, "1.0.0", "1.1.0")
    record = _set(central_module, model, "production", "1.0.0")
    assert record["model"] == model
    assert record["alias"] == "production"
    assert record["version"] == "1.0.0"
    assert record["manifest_digest"] == versions["1.0.0"]["manifest_digest"]
    assert str(record["updated_at"]).endswith("Z")

    assert api_ok(central_module, "GET", _alias_path(model, "production")) == record
    listed = api_ok(central_module, "GET", f"/api/v1/models/{model}/aliases")
    assert listed["items"] == [record]

    resolved = api_ok(central_module, "GET", f"/api/v1/models/{model}/versions/production")
    assert resolved["version"] == "1.0.0"
    assert resolved["aliases"] == ["production"]
    assert api_ok(central_module, "GET", f"/api/v1/models/{model}")["aliases"] == {
        "production": "1.0.0"
    }
    other = api_ok(central_module, "GET", f"/api/v1/models/{model}/versions/1.1.0")
    assert other["aliases"] == []


def test_moving_an_alias_records_history_newest_first(central_module: CentralProcess) -> None:
    model, _ = _model_with_versions(central_module, "1.0.0", "1.1.0", "1.2.0")
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        _set(central_module, model, "staging", version)
    history = api_ok(central_module, "GET", _alias_path(model, "staging") + "/history")["items"]
    assert [(h["version"], h["previous"]) for h in history] == [
        ("1.2.0", "1.1.0"),
        ("1.1.0", "1.0.0"),
        ("1.0.0", None),
    ]
    assert all(h["actor"] for h in history)
    assert [h["at"] for h in history] == sorted((h["at"] for h in history), reverse=True)
    resolved = api_ok(central_module, "GET", f"/api/v1/models/{model}/versions/staging")
    assert resolved["version"] == "1.2.0"


def test_rollback_points_the_alias_at_its_previous_target(
    central_module: CentralProcess,
) -> None:
    model, versions = _model_with_versions(central_module, "1.0.0", "1.1.0")
    _set(central_module, model, "production", "1.0.0")
    _set(central_module, model, "production", "1.1.0")

    rolled = api_ok(central_module, "POST", _alias_path(model, "production") + "/rollback")
    assert rolled["version"] == "1.0.0"
    assert rolled["manifest_digest"] == versions["1.0.0"]["manifest_digest"]
    resolved = api_ok(central_module, "GET", f"/api/v1/models/{model}/versions/production")
    assert resolved["version"] == "1.0.0"
    newest = api_ok(central_module, "GET", _alias_path(model, "production") + "/history")["items"][
        0
    ]
    assert (newest["version"], newest["previous"]) == ("1.0.0", "1.1.0")
    assert newest["action"] == "rollback"


def test_rollback_without_a_previous_target_is_409(central_module: CentralProcess) -> None:
    model, _ = _model_with_versions(central_module, "1.0.0")
    _set(central_module, model, "production", "1.0.0")
    resp = api(central_module, "POST", _alias_path(model, "production") + "/rollback")
    assert resp.status == 409
    assert resp.error()["code"] == "conflict"
    assert api_ok(central_module, "GET", _alias_path(model, "production"))["version"] == "1.0.0"


def test_delete_an_alias(central_module: CentralProcess) -> None:
    model, _ = _model_with_versions(central_module, "1.0.0")
    _set(central_module, model, "canary", "1.0.0")
    resp = api(central_module, "DELETE", _alias_path(model, "canary"))
    assert resp.status == 204
    assert resp.body == b""
    gone = api(central_module, "GET", _alias_path(model, "canary"))
    assert gone.status == 404
    assert gone.error()["code"] == "not_found"
    by_ref = api(central_module, "GET", f"/api/v1/models/{model}/versions/canary")
    assert by_ref.status == 404
    assert api_ok(central_module, "GET", f"/api/v1/models/{model}")["aliases"] == {}
    assert api_ok(central_module, "GET", f"/api/v1/models/{model}/aliases")["items"] == []
    again = api(central_module, "DELETE", _alias_path(model, "canary"))
    assert again.status == 404


def test_alias_to_unknown_version_or_model_is_404(central_module: CentralProcess) -> None:
    model, _ = _model_with_versions(central_module, "1.0.0")
    resp = api(central_module, "PUT", _alias_path(model, "production"), json={"version": "9.9.9"})
    assert resp.status == 404
    err = resp.error()
    assert err["code"] == "not_found"
    assert "9.9.9" in err["message"]
    assert api(central_module, "GET", _alias_path(model, "production")).status == 404

    other = unique("nomodel")
    resp = api(central_module, "PUT", _alias_path(other, "production"), json={"version": "1.0.0"})
    assert resp.status == 404
    assert api(central_module, "GET", f"/api/v1/models/{other}").status == 404


def test_invalid_alias_name_is_400(central_module: CentralProcess) -> None:
    model, _ = _model_with_versions(central_module, "1.0.0")
    resp = api(central_module, "PUT", _alias_path(model, "Prod"), json={"version": "1.0.0"})
    assert resp.status == 400
    err = resp.error()
    assert err["code"] == "invalid"
    assert "Prod" in err["message"]
