"""``skiff edge``: run the agent, show what a running agent serves, or make a cache key."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shared.errors import SkiffError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skiff edge", description="The Skiff edge agent.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent: sync, verify, cache, serve")
    run.add_argument("--config", type=Path, required=True, help="edge.toml")
    run.add_argument("--listen", help="HOST:PORT of the inference API (overrides the file)")
    run.add_argument("--data-dir", type=Path, help="cache directory (overrides the file)")
    run.add_argument("--sideload-dir", type=Path, help="bundle folder (overrides the file)")
    status = sub.add_parser("status", help="show slots, sync cursor, last contact, cache use")
    status.add_argument("--config", type=Path, help="edge.toml (to find the agent's address)")
    status.add_argument("--url", help="the agent's base URL, e.g. http://127.0.0.1:8500")
    status.add_argument("--json", action="store_true", help="print JSON")
    gen_key = sub.add_parser(
        "gen-key", help="write a new device key file (mode 0600) for cache_key_file"
    )
    gen_key.add_argument("-o", "--output", type=Path, required=True, help="key file to create")
    return parser


def _gen_key(args: argparse.Namespace) -> int:
    from edge_agent.cache_key import generate_cache_key_file
    from shared.segments import key_id

    key = generate_cache_key_file(args.output)
    print(f"wrote device key {key_id(key)} to {args.output} (mode 0600)")
    print(f"set cache_key_file = {json.dumps(str(args.output))} in edge.toml; keep a copy:")
    print("without it the encrypted cache cannot be read")
    return 0


def _status_url(args: argparse.Namespace) -> tuple[str, ssl.SSLContext | None]:
    if args.url:
        return str(args.url).rstrip("/"), None
    if args.config:
        from edge_agent.config import EdgeConfig

        config = EdgeConfig.load(args.config)
        host, port = config.host_port()
        if config.tls_cert_file is None:
            return f"http://{host}:{port}", None
        # our own agent: trust exactly the certificate its configuration names
        context = ssl.create_default_context(cafile=str(config.tls_cert_file))
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = False
        return f"https://{host}:{port}", context
    return "http://127.0.0.1:8500", None


def _print_status(body: dict[str, Any]) -> None:
    print(
        f"fleet {body['fleet']}  serial {body['fleet_serial']}  root v{body['root_version']}"
        f"  cursor {body['cursor']}"
    )
    connected = "connected" if body["connected"] else "offline"
    print(
        f"last contact {body['last_contact'] or 'never'} ({connected})"
        f"  cache {body['cache_bytes']:,} bytes"
    )
    print()
    print(f"{'MODEL':<24} {'SERVING':<14} {'PREVIOUS':<14} BAD")
    for slot in body["slots"]:
        bad = ", ".join(f"{v} ({why[:40]})" for v, why in slot["bad_versions"].items())
        print(
            f"{slot['model']:<24} {slot['serving'] or '-':<14} {slot['previous'] or '-':<14}"
            f" {bad or '-'}"
        )
    for err in body["errors"][-5:]:
        print(f"! {err['at']} {err['where']}: {err['error']}")


def _status(args: argparse.Namespace) -> int:
    base, context = _status_url(args)
    url = base + "/skiff/status"
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as resp:  # noqa: S310
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"skiff: error: cannot reach the edge agent at {url}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        _print_status(body)
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "status":
            return _status(args)
        if args.command == "gen-key":
            return _gen_key(args)
        from edge_agent.config import EdgeConfig
        from edge_agent.daemon import run

        config = EdgeConfig.load(
            args.config, listen=args.listen, data_dir=args.data_dir, sideload_dir=args.sideload_dir
        )
        run(config)
        return 0
    except SkiffError as e:
        print(f"skiff: error: {e}", file=sys.stderr)
        return 1
