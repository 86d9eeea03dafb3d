"""Models and versions against a real central: registration, formats, ordering, batches."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

import pytest

from shared.digest import sha256_digest
from tests.onnx_models import ORT_DATASETS, broken_model, linear_model, multi_input_model
from tests.support import (
    CentralProcess,
    all_changes,
    all_pages,
    api,
    api_ok,
    put_blob,
    register,
    unique,
)

SEMVER_PRECEDENCE = [
    "0.9.0",
    "1.0.0-alpha",
    "1.0.0-rc.1",
    "1.0.0-rc.2",
    "1.0.0-rc.10",
    "1.0.0",
    "1.2.0",
    "1.9.0",
    "1.10.0",
    "2.0.0",
]


def _versions_path(model: str) -> str:
    return f"/api/v1/models/{model}/versions"


def _snapshot(central: CentralProcess) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return all_changes(central), all_pages(central, "/api/v1/models")


def test_register_onnx_detects_format_and_signature(central_module: CentralProcess) -> None:
    model = unique("linear")
    data = linear_model(2.0)
    version = register(central_module, model, "1.0.0", files={"model.onnx": data})

    assert version["model"] == model
    assert version["version"] == "1.0.0"
    assert version["format"] == "onnx"
    assert version["branch"] == "main"
    assert version["parent"] is None
    assert version["stage"] == "development"
    assert version["signature"]["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 3]}]
    assert version["signature"]["outputs"] == [{"name": "Y", "datatype": "FP32", "shape": [-1, 1]}]
    blob = api_ok(central_module, "GET", f"/api/v1/blobs/{sha256_digest(data)}/info")
    assert version["files"] == [
        {
            "path": "model.onnx",
            "digest": blob["digest"],
            "size": len(data),
            "zdigest": blob["zdigest"],
            "zsize": blob["zsize"],
        }
    ]
    assert version["manifest_digest"].startswith("sha256:")
    assert version["metadata_digest"].startswith("sha256:")
    assert version["created_at"].endswith("Z")

    fetched = api_ok(central_module, "GET", f"{_versions_path(model)}/1.0.0")
    assert fetched == version

    record = api_ok(central_module, "GET", f"/api/v1/models/{model}")
    assert record["name"] == model
    assert record["version_count"] == 1
    assert record["latest_version"] == "1.0.0"


def test_register_ort_example_shows_non_tensor_output(central_module: CentralProcess) -> None:
    model = unique("iris")
    data = (ORT_DATASETS / "logreg_iris.onnx").read_bytes()
    version = register(central_module, model, "1.0.0", files={"model.onnx": data})
    assert version["format"] == "onnx"
    inputs = {i["name"]: i for i in version["signature"]["inputs"]}
    outputs = {o["name"]: o for o in version["signature"]["outputs"]}
    assert inputs["float_input"]["datatype"] == "FP32"
    assert outputs["label"]["datatype"] == "INT64"
    assert outputs["probabilities"]["datatype"] == "seq(map(int64,tensor(float)))"


def test_register_multi_input_model_shows_int64_scalar(central_module: CentralProcess) -> None:
    model = unique("multi")
    version = register(central_module, model, "1.0.0", files={"m.onnx": multi_input_model()})
    assert version["signature"]["inputs"] == [
        {"name": "X", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "K", "datatype": "INT64", "shape": []},
    ]


def test_multi_file_saved_model(central_module: CentralProcess) -> None:
    model = unique("savedmodel")
    files = {
        "saved_model.pb": b"\x08\x01" + os.urandom(200),
        "variables/variables.index": os.urandom(64),
        "variables/variables.data-00000-of-00001": os.urandom(4096),
        "assets/vocab.txt": b"a\nb\nc\n",
    }
    version = register(central_module, model, "1.0.0", files=files)
    assert version["format"] == "tf_savedmodel"
    assert version["signature"] is None
    listed = {f["path"]: f for f in version["files"]}
    assert set(listed) == set(files)
    for path, data in files.items():
        assert listed[path]["digest"] == sha256_digest(data)
        assert listed[path]["size"] == len(data)


@pytest.mark.parametrize(
    ("files", "fmt"),
    [
        (
            {
                "model.pmml": b'<?xml version="1.0"?>\n<PMML version="4.4" xmlns="http://www.dmg.org/PMML-4_4"/>\n'
            },
            "pmml",
        ),
        ({"weights.bin": b"\x00\x01\x02", "README.txt": b"hello"}, "other"),
    ],
    ids=["pmml", "other"],
)
def test_other_formats_are_detected(
    central_module: CentralProcess, files: dict[str, bytes], fmt: str
) -> None:
    version = register(central_module, unique(fmt), "1.0.0", files=files)
    assert version["format"] == fmt
    assert version["signature"] is None


def test_auto_version_is_next_patch_on_the_branch(central_module: CentralProcess) -> None:
    model = unique("auto")
    register(central_module, model, "1.0.0")
    register(central_module, model, "1.0.1")
    register(central_module, model, "2.0.0", branch="exp")

    on_main = register(central_module, model)
    assert on_main["version"] == "1.0.2"
    assert on_main["branch"] == "main"
    on_exp = register(central_module, model, branch="exp")
    assert on_exp["version"] == "2.0.1"
    assert on_exp["branch"] == "exp"


def test_auto_version_of_a_new_model_is_valid_semver(central_module: CentralProcess) -> None:
    version = register(central_module, unique("fresh"))
    major, minor, patch = version["version"].split(".")
    assert all(part.isdigit() for part in (major, minor, patch))


def test_branch_and_parent_are_recorded(central_module: CentralProcess) -> None:
    model = unique("lineage")
    register(central_module, model, "1.0.0")
    child = register(central_module, model, "1.1.0-exp.1", branch="exp", parent="1.0.0")
    assert child["branch"] == "exp"
    assert child["parent"] == "1.0.0"
    assert api_ok(central_module, "GET", f"{_versions_path(model)}/1.1.0-exp.1") == child

    exp = all_pages(central_module, f"{_versions_path(model)}?branch=exp")
    assert [v["version"] for v in exp] == ["1.1.0-exp.1"]
    main = all_pages(central_module, f"{_versions_path(model)}?branch=main")
    assert [v["version"] for v in main] == ["1.0.0"]


def test_unknown_parent_is_refused(central_module: CentralProcess) -> None:
    model = unique("orphan")
    register(central_module, model, "1.0.0")
    digest = put_blob(central_module, linear_model())
    before = _snapshot(central_module)
    resp = api(
        central_module,
        "POST",
        _versions_path(model),
        json={
            "version": "1.1.0",
            "parent": "0.9.9",
            "files": [{"path": "m.onnx", "digest": digest}],
        },
    )
    assert resp.status in (400, 404, 409), resp.body
    assert "0.9.9" in resp.error()["message"]
    assert _snapshot(central_module) == before


def test_versions_list_in_semver_order(central_module: CentralProcess) -> None:
    model = unique("semver")
    shuffled = [SEMVER_PRECEDENCE[i] for i in (6, 9, 2, 5, 0, 8, 4, 1, 7, 3)]
    for version in shuffled:
        register(central_module, model, version)
    listed = [v["version"] for v in all_pages(central_module, _versions_path(model))]
    assert listed == list(reversed(SEMVER_PRECEDENCE))


def test_metadata_round_trip(central_module: CentralProcess) -> None:
    model = unique("meta")
    metadata = {
        "training": {
            "params": {"lr": "0.001", "epochs": "20"},
            "metrics": {"auc": 0.92, "loss": 0.125, "samples": 120000},
            "datasets": ["s3://bucket/train.parquet", "s3://bucket/valid.parquet"],
        },
        "provenance": {
            "code_version": "abc123",
            "pipeline_run": "run-42",
            "data_lineage": [{"source": "warehouse.events", "snapshot": "2026-11-01"}],
        },
        "deployment": {"min_agent": "0.1.0", "hardware": ["arm64", "x86_64"]},
        "extra": {"notes": "Größe ✓", "nested": {"a": [1, 2, {"b": None}]}},
    }
    version = register(
        central_module,
        model,
        "1.0.0",
        description="gradient boosted",
        tags={"team": "risk"},
        metadata=metadata,
    )
    assert version["metadata"] == metadata
    assert version["description"] == "gradient boosted"
    assert version["tags"] == {"team": "risk"}
    metrics = version["metadata"]["training"]["metrics"]
    assert isinstance(metrics["auc"], float)
    assert isinstance(metrics["samples"], int)

    fetched = api_ok(central_module, "GET", f"{_versions_path(model)}/1.0.0")
    assert fetched["metadata"] == metadata

    doc = api_ok(central_module, "GET", f"{_versions_path(model)}/1.0.0/metadata")
    assert doc["training"] == metadata["training"]
    assert doc["provenance"] == metadata["provenance"]


def test_broken_onnx_is_refused_and_nothing_registered(central_module: CentralProcess) -> None:
    model = unique("broken")
    digest = put_blob(central_module, broken_model())
    before = _snapshot(central_module)
    resp = api(
        central_module,
        "POST",
        _versions_path(model),
        json={"version": "1.0.0", "files": [{"path": "model.onnx", "digest": digest}]},
    )
    assert resp.status == 400, resp.body
    err = resp.error()
    assert err["code"] == "invalid"
    assert "onnx" in err["message"].lower()
    assert api(central_module, "GET", f"{_versions_path(model)}/1.0.0").status == 404
    assert _snapshot(central_module) == before


def test_missing_blob_is_409_naming_the_digest(central_module: CentralProcess) -> None:
    model = unique("missing")
    present = put_blob(central_module, linear_model())
    absent = sha256_digest(b"not uploaded " + os.urandom(8))
    before = _snapshot(central_module)
    resp = api(
        central_module,
        "POST",
        _versions_path(model),
        json={
            "version": "1.0.0",
            "files": [
                {"path": "model.onnx", "digest": present},
                {"path": "extra.bin", "digest": absent},
            ],
        },
    )
    assert resp.status == 409, resp.body
    err = resp.error()
    assert err["code"] == "conflict"
    assert absent in err["message"]
    assert _snapshot(central_module) == before


def _batch_entry(model: str, version: str, digest: str) -> dict[str, Any]:
    return {
        "model": model,
        "version": version,
        "files": [{"path": "model.onnx", "digest": digest}],
        "metadata": {"training": {"metrics": {"auc": 0.5}}},
    }


def test_batch_registers_twenty_versions(central_module: CentralProcess) -> None:
    models = [unique("batch-a"), unique("batch-b")]
    digest = put_blob(central_module, linear_model())
    entries = [_batch_entry(models[i % 2], f"1.0.{i}", digest) for i in range(20)]
    resp = api_ok(central_module, "POST", "/api/v1/versions:batch", 201, json={"versions": entries})
    assert [(v["model"], v["version"]) for v in resp["items"]] == [
        (e["model"], e["version"]) for e in entries
    ]
    for model in models:
        listed = all_pages(central_module, _versions_path(model))
        assert len(listed) == 10
        assert api_ok(central_module, "GET", f"/api/v1/models/{model}")["version_count"] == 10


@pytest.mark.parametrize("bad", ["missing_blob", "bad_version", "duplicate"])
def test_batch_with_one_bad_entry_registers_nothing(
    central_module: CentralProcess, bad: str
) -> None:
    model = unique("batch-bad")
    digest = put_blob(central_module, linear_model())
    entries = [_batch_entry(model, f"1.0.{i}", digest) for i in range(20)]
    if bad == "missing_blob":
        entries[13]["files"] = [{"path": "model.onnx", "digest": sha256_digest(b"nope")}]
    elif bad == "bad_version":
        entries[13]["version"] = "1.0"
    else:
        entries[13]["version"] = "1.0.2"
    before = _snapshot(central_module)
    resp = api(central_module, "POST", "/api/v1/versions:batch", json={"versions": entries})
    assert resp.status in (400, 409), resp.body
    resp.error()
    assert api(central_module, "GET", f"/api/v1/models/{model}").status == 404
    assert _snapshot(central_module) == before


def test_create_and_patch_a_model(central_module: CentralProcess) -> None:
    name = unique("created")
    created = api_ok(
        central_module,
        "POST",
        "/api/v1/models",
        201,
        json={"name": name, "description": "first", "tags": {"team": "risk"}},
    )
    assert created["name"] == name
    assert created["description"] == "first"
    assert created["tags"] == {"team": "risk"}
    assert created["owner"]
    assert created["version_count"] == 0
    assert created["latest_version"] is None
    assert created["aliases"] == {}

    again = api(central_module, "POST", "/api/v1/models", json={"name": name})
    assert again.status == 409
    assert again.error()["code"] == "conflict"

    patched = api_ok(
        central_module,
        "PATCH",
        f"/api/v1/models/{name}",
        json={"description": "second", "tags": {"team": "fraud", "tier": "1"}},
    )
    assert patched["description"] == "second"
    assert patched["tags"] == {"team": "fraud", "tier": "1"}
    assert patched["created_at"] == created["created_at"]
    assert patched["updated_at"] >= created["updated_at"]
    assert api_ok(central_module, "GET", f"/api/v1/models/{name}") == patched

    only_description = api_ok(
        central_module, "PATCH", f"/api/v1/models/{name}", json={"description": "third"}
    )
    assert only_description["tags"] == {"team": "fraud", "tier": "1"}


def test_model_pagination_covers_every_item_once(central_module: CentralProcess) -> None:
    prefix = unique("page")
    names = sorted(f"{prefix}-{i:02d}" for i in range(7))
    for name in reversed(names):
        api_ok(central_module, "POST", "/api/v1/models", 201, json={"name": name})

    seen: list[str] = []
    pages = 0
    path = f"/api/v1/models?prefix={prefix}&limit=3"
    while True:
        page = api_ok(central_module, "GET", path)
        pages += 1
        assert len(page["items"]) <= 3
        seen.extend(m["name"] for m in page["items"])
        if page["next_cursor"] is None:
            break
        assert pages < 10
        cursor = quote(page["next_cursor"], safe="")
        path = f"/api/v1/models?prefix={prefix}&limit=3&cursor={cursor}"
    assert seen == names
    assert pages == 3


def test_version_pagination_covers_every_item_once(central_module: CentralProcess) -> None:
    model = unique("vpage")
    for version in SEMVER_PRECEDENCE:
        register(central_module, model, version)
    everything = [v["version"] for v in all_pages(central_module, _versions_path(model), limit=3)]
    assert everything == list(reversed(SEMVER_PRECEDENCE))


def test_default_page_size_is_50(central_module: CentralProcess) -> None:
    prefix = unique("many")
    for i in range(55):
        api_ok(central_module, "POST", "/api/v1/models", 201, json={"name": f"{prefix}-{i:02d}"})
    first = api_ok(central_module, "GET", f"/api/v1/models?prefix={prefix}")
    assert len(first["items"]) == 50
    assert first["next_cursor"]
    cursor = quote(first["next_cursor"], safe="")
    second = api_ok(central_module, "GET", f"/api/v1/models?prefix={prefix}&cursor={cursor}")
    assert len(second["items"]) == 5
    assert second["next_cursor"] is None


RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_times_are_rfc3339_utc(central_module: CentralProcess) -> None:
    model = unique("times")
    version = register(central_module, model, "1.0.0")
    record = api_ok(central_module, "GET", f"/api/v1/models/{model}")
    blob = api_ok(central_module, "GET", f"/api/v1/blobs/{version['files'][0]['digest']}/info")
    for value in (
        version["created_at"],
        record["created_at"],
        record["updated_at"],
        blob["created_at"],
    ):
        assert RFC3339_UTC.match(value), value


def test_build_metadata_is_kept(central_module: CentralProcess) -> None:
    model = unique("build")
    version = register(central_module, model, "1.2.3+build.5")
    assert version["version"] == "1.2.3+build.5"
    fetched = api_ok(central_module, "GET", f"{_versions_path(model)}/1.2.3+build.5")
    assert fetched == version


def test_json_responses_say_so(central_module: CentralProcess) -> None:
    resp = api(central_module, "GET", "/api/v1/models")
    assert resp.headers["Content-Type"].startswith("application/json")
    missing = api(central_module, "GET", "/api/v1/models/nosuch")
    assert missing.headers["Content-Type"].startswith("application/json")
