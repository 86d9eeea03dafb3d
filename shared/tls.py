"""TLS for both daemons: server contexts, client contexts pinned to a CA, plaintext policy.

Plaintext HTTP is acceptable on a loopback address only: anything else carries bearer
tokens over the network, so it needs TLS or an explicit ``allow_plaintext = true``.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from shared.errors import InvalidInputError

__all__ = ["check_plaintext", "client_context", "is_loopback", "server_context"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address) can only be reached from this machine."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext(what: str, host: str, *, tls: bool, allow_plaintext: bool) -> None:
    """Refuse plaintext HTTP to or on a non-loopback ``host`` unless explicitly allowed.

    Raises:
        InvalidInputError: ``tls`` is false, ``host`` is not loopback and
            ``allow_plaintext`` is false; the message says how to fix it.
    """
    if tls or allow_plaintext or is_loopback(host):
        return
    raise InvalidInputError(
        f"refusing plaintext HTTP {what} {host}, which is not a loopback address: "
        "configure TLS, or set allow_plaintext = true to accept it"
    )


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for a PEM certificate chain and its private key.

    Raises:
        InvalidInputError: a file is missing or the pair cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (OSError, ssl.SSLError) as e:
        raise InvalidInputError(
            f"cannot load TLS certificate {cert_file} with key {key_file}: {e}"
        ) from e
    return context


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: trust ``ca_file`` only, or the system CAs when None.

    Raises:
        InvalidInputError: ``ca_file`` is missing or not a PEM CA bundle.
    """
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as e:
        raise InvalidInputError(f"cannot load CA file {ca_file}: {e}") from e
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
