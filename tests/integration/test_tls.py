"""TLS end to end: central over HTTPS, the CLI and an edge agent pinning its CA.

A CA and a server certificate for 127.0.0.1/localhost are made here with
``cryptography``; a second, unrelated CA stands for an attacker's.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import (
    SKIFF,
    CentralProcess,
    free_port,
    init_central,
    run_skiff,
    set_toml_settings,
    skiff_env,
)

MODEL = "tls-model"
FLEET = "tls-fleet"


@dataclass(frozen=True)
class Pki:
    ca: Path  # PEM CA certificate that signed the server certificate
    other_ca: Path  # an unrelated CA
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = _ca("Skiff test CA")
    _, other = _ca("Someone else's CA")
    key, cert = _server(ca_key, ca)
    (d / "ca.pem").write_bytes(_pem(ca))
    (d / "other-ca.pem").write_bytes(_pem(other))
    (d / "server.pem").write_bytes(_pem(cert))
    (d / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (d / "server.key").chmod(0o600)
    return Pki(d / "ca.pem", d / "other-ca.pem", d / "server.pem", d / "server.key")


class TlsCentral(CentralProcess):
    """A central serving HTTPS; health checks verify its certificate with the test CA."""

    def __init__(self, data_dir: Path, token: str, ca: Path) -> None:
        super().__init__(data_dir, token)
        self.ca = ca
        self.url = f"https://127.0.0.1:{self.port}"
        self.env["SKIFF_URL"] = self.url

    def _healthy(self) -> bool:
        try:
            return self.request("GET", "/healthz", auth=False)[0] == 200
        except OSError:
            return False

    def request(
        self, method: str, path: str, body: Any = None, *, auth: bool = True
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        context = ssl.create_default_context(cafile=str(self.ca))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=context)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
        finally:
            conn.close()


@pytest.fixture(scope="module")
def tls_central(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsCentral]:
    data_dir = tmp_path_factory.mktemp("tls") / "central"
    plain = init_central(data_dir, tls_cert_file=str(pki.cert), tls_key_file=str(pki.key))
    central = TlsCentral(data_dir, plain.token, pki.ca)
    central.start()
    try:
        yield central
    finally:
        central.stop()
        central.kill()


def test_central_serves_https_and_not_plain_http(tls_central: TlsCentral) -> None:
    status, body = tls_central.request("GET", "/api/v1/models")
    assert status == 200 and body["items"] == []
    conn = http.client.HTTPConnection("127.0.0.1", tls_central.port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        with pytest.raises((http.client.HTTPException, OSError)):
            conn.getresponse().read()
    finally:
        conn.close()
    assert "on https://127.0.0.1" in tls_central.log_text()


def test_cli_verifies_central_with_cacert(tls_central: TlsCentral, pki: Pki) -> None:
    env = dict(tls_central.env)
    run_skiff("models", "list", "--cacert", str(pki.ca), "--json", env=env)
    with_env = run_skiff("models", "list", "--json", env={**env, "SKIFF_CA_FILE": str(pki.ca)})
    assert json.loads(with_env.stdout) == []
    for extra in ([], ["--cacert", str(pki.other_ca)]):
        refused = run_skiff("models", "list", *extra, env=env, check=False)
        assert refused.returncode == 1
        assert "certificate" in refused.stderr.lower(), refused.stderr


def _agent_config(tls_central: TlsCentral, pki: Pki, tmp_path: Path, device: str) -> Path:
    config = tmp_path / f"{device}.toml"
    run_skiff(
        "device",
        "enroll",
        device,
        "--fleet",
        FLEET,
        "-o",
        str(config),
        "--data-dir",
        str(tmp_path / device),
        "--cacert",
        str(pki.ca),
        env=tls_central.env,
    )
    set_toml_settings(
        config,
        {
            "sync_wait_seconds": 2.0,
            "sync_backoff_initial_seconds": 0.2,
            "sync_backoff_max_seconds": 1.0,
            "tls_cert_file": str(pki.cert),
            "tls_key_file": str(pki.key),
        },
    )
    return config


class TlsAgent:
    """A ``skiff edge run`` process whose own API is HTTPS too."""

    def __init__(self, config: Path, log: Path, ca: Path) -> None:
        self.port = free_port()
        set_toml_settings(config, {"listen": f"127.0.0.1:{self.port}"})  # for 'edge status'
        self.context = ssl.create_default_context(cafile=str(ca))
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*SKIFF, "edge", "run", "--config", str(config)],
                stdout=out,
                stderr=out,
                env=skiff_env(),
            )

    def status(self) -> dict[str, Any] | None:
        url = f"https://127.0.0.1:{self.port}/skiff/status"
        try:
            with urllib.request.urlopen(url, timeout=5, context=self.context) as resp:
                return dict(json.loads(resp.read()))
        except (urllib.error.URLError, OSError):
            return None

    def wait_for(self, key: str, value: Any, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            last = self.status()
            if last is not None and last.get(key) == value:
                return last
            time.sleep(0.2)
        raise AssertionError(f"{key} != {value!r}: {last}\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def test_agent_pinning_the_ca_syncs_over_https(
    tls_central: TlsCentral, pki: Pki, tmp_path: Path
) -> None:
    from tests.onnx_models import linear_model

    env = tls_central.env
    run_skiff("fleet", "create", FLEET, "--cacert", str(pki.ca), env=env)
    model = tmp_path / "model.onnx"
    model.write_bytes(linear_model())
    run_skiff("push", MODEL, str(model), "--version", "1.0.0", "--cacert", str(pki.ca), env=env)
    run_skiff("alias", "set", MODEL, "production", "1.0.0", "--cacert", str(pki.ca), env=env)
    run_skiff(
        "fleet", "assign", FLEET, MODEL, "--alias", "production", "--cacert", str(pki.ca), env=env
    )

    good = _agent_config(tls_central, pki, tmp_path, "tls-good")
    text = good.read_text()
    assert f'central_url = "{tls_central.url}"' in text
    assert f'ca_file = "{pki.ca}"' in text
    agent = TlsAgent(good, tmp_path / "good.log", pki.ca)
    try:
        status = agent.wait_for("connected", True)
        assert status["fleet"] == FLEET
        deadline = time.monotonic() + 30
        while [s.get("serving") for s in status["slots"]] != ["1.0.0"]:
            assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
            time.sleep(0.2)
            status = agent.status() or status
        assert status["fleet_serial"] is not None
        shown = run_skiff("edge", "status", "--config", str(good), "--json", env=skiff_env())
        assert json.loads(shown.stdout)["connected"] is True
    finally:
        agent.stop()

    wrong = _agent_config(tls_central, pki, tmp_path, "tls-wrong")
    set_toml_settings(wrong, {"ca_file": str(pki.other_ca)})
    impostor = TlsAgent(wrong, tmp_path / "wrong.log", pki.ca)
    try:
        impostor.wait_for("connected", False)
        time.sleep(2.0)  # several sync attempts
        status = impostor.status()
        assert status is not None
        assert status["connected"] is False and status["fleet_serial"] is None
        assert "certificate" in impostor.log.read_text().lower()
    finally:
        impostor.stop()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"listen": "0.0.0.0:1"}, "refusing plaintext HTTP on 0.0.0.0"),
        ({"tls_cert_file": "/nonexistent.pem", "tls_key_file": "/nonexistent.key"}, "cannot load"),
        ({"tls_cert_file": "/nonexistent.pem"}, "must be set together"),
    ],
)
def test_central_refuses_to_start_without_tls_off_loopback(
    tmp_path: Path, settings: dict[str, object], message: str
) -> None:
    central = init_central(tmp_path / "central")
    set_toml_settings(central.data_dir / "central.toml", settings)
    listen = str(settings.get("listen", f"127.0.0.1:{free_port()}"))
    set_toml_settings(central.data_dir / "central.toml", {"listen": listen})
    proc = run_skiff(
        "central", "serve", "--data-dir", str(central.data_dir), env=skiff_env(), check=False
    )
    assert proc.returncode == 1
    assert message in proc.stderr, proc.stderr
