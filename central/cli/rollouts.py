"""Rollout verbs: ``rollout start|list|status|pause|resume|abort|promote``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from central.cli.arguments import duration
from central.cli.client import RegistryClient, api_path
from central.cli.command import with_client
from central.cli.output import Output, fields, table

if TYPE_CHECKING:
    from central.cli.command import Subparsers

__all__ = ["register"]


def steps(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps are percents like 5,25,50,100: {text!r}") from None


def split(text: str) -> int:
    """``90/10`` (baseline/candidate) → the candidate's percent."""
    parts = text.split("/")
    try:
        baseline, candidate = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"split is BASELINE/CANDIDATE like 90/10: {text!r}"
        ) from None
    if baseline + candidate != 100:
        raise argparse.ArgumentTypeError(f"split must add up to 100: {text!r}")
    return candidate


def bound(text: str) -> tuple[str, dict[str, float]]:
    """``METRIC=MIN..MAX`` (either side may be empty) → (metric, {"min", "max"})."""
    name, sep, span = text.partition("=")
    low, dots, high = span.partition("..")
    try:
        limits = {k: float(v) for k, v in (("min", low), ("max", high)) if v.strip()}
    except ValueError:
        limits = {}
    if not sep or not dots or not name or not limits:
        raise argparse.ArgumentTypeError(
            f"a bound is METRIC=MIN..MAX, e.g. error_rate=..0.01 or class_share:1=0.2..0.6: "
            f"{text!r}"
        )
    return name, limits


def render_rollout(r: Any) -> str:
    head = fields(
        [
            ("rollout", r["id"]),
            ("model", r["model"]),
            ("fleet", r["fleet"]),
            ("strategy", r["strategy"]),
            ("candidate", r["candidate"]),
            ("baseline", r["baseline"]),
            ("status", r["status"] + (f" ({r['reason']})" if r.get("reason") else "")),
            ("step", f"{r['step'] + 1}/{len(r['steps'])}: {r['percent']}%"),
            ("next decision", r.get("next_decision_at") or "-"),
        ]
    )
    rows = []
    for version, v in r.get("versions", {}).items():
        lat = v["latency_ms"]
        rows.append(
            (
                version,
                v["devices"],
                v["requests"],
                "-" if v["error_rate"] is None else f"{v['error_rate']:.4f}",
                *("-" if lat[k] is None else f"{lat[k]:.2f}" for k in ("p50", "p95", "p99")),
            )
        )
    versions = table(
        ["VERSION", "DEVICES", "REQUESTS", "ERROR RATE", "P50 MS", "P95 MS", "P99 MS"], rows
    )
    drift = table(
        ["FEATURE", "PSI", "KS", "LIVE N", "LEVEL"],
        [
            (name, f["psi"], f["ks"], f["live_n"], f["level"])
            for name, f in (r.get("drift") or {}).items()
        ],
    )
    verdicts = table(
        ["RULE", "VERDICT", "DETAIL"],
        [(v["rule"], v["verdict"], v["detail"]) for v in r.get("verdicts", [])],
    )
    events = table(
        ["AT", "EVENT", "DETAIL"],
        [
            (e["at"], e["kind"], e.get("reason") or e.get("percent") or "")
            for e in r.get("events", [])
        ],
    )
    parts = [head, versions] + ([drift] if r.get("drift") else []) + [verdicts, events]
    return "\n\n".join(parts)


async def _start(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "model": args.model,
        "fleet": args.fleet,
        "candidate": args.candidate,
        "strategy": args.strategy,
        "soak_seconds": args.soak,
    }
    if args.baseline:
        body["baseline"] = args.baseline
    if args.strategy == "ab":
        body["split"] = args.split if args.split is not None else 10
        if args.sticky_header:
            body["sticky_header"] = args.sticky_header
    else:
        body["steps"] = args.steps
    rules: dict[str, Any] = {
        k: getattr(args, k)
        for k in (
            "min_requests",
            "max_error_rate_increase",
            "max_p95_ratio",
            "max_error_rate",
            "max_drift_psi",
        )
        if getattr(args, k) is not None
    }
    if args.bound:
        rules["bounds"] = dict(args.bound)
    if rules:
        body["rules"] = rules
    out.result(await client.send_json("POST", api_path("rollouts"), body), render_rollout)


async def _status(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    out.result(await client.get_json(api_path("rollouts", args.id)), render_rollout)


async def _list(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
    page = await client.get_json(
        api_path("rollouts"), {"fleet": args.fleet, "model": args.model, "status": args.status}
    )
    out.result(
        page["items"],
        lambda items: table(
            ["ROLLOUT", "MODEL", "FLEET", "STRATEGY", "CANDIDATE", "BASELINE", "STATUS", "%"],
            [
                (
                    r["id"],
                    r["model"],
                    r["fleet"],
                    r["strategy"],
                    r["candidate"],
                    r["baseline"],
                    r["status"],
                    r["percent"],
                )
                for r in items
            ],
        ),
    )


def _action(name: str) -> Any:
    async def act(client: RegistryClient, out: Output, args: argparse.Namespace) -> None:
        record = await client.send_json("POST", api_path("rollouts", args.id, name))
        out.result(record, render_rollout)

    return act


def register(sub: Subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``rollout`` to the parser tree."""
    rollout = sub.add_parser("rollout", help="canary and A/B rollouts judged by telemetry")
    verbs = rollout.add_subparsers(dest="verb", required=True, metavar="VERB")
    start = verbs.add_parser("start", parents=parents, help="start a rollout")
    start.add_argument("model")
    start.add_argument("--fleet", required=True)
    start.add_argument("--candidate", required=True, help="the version to roll out")
    start.add_argument("--baseline", help="default: what the fleet serves now")
    start.add_argument("--strategy", choices=("canary", "ab"), default="canary")
    start.add_argument(
        "--steps",
        type=steps,
        default=[5, 25, 50, 100],
        help="canary: percents of devices, e.g. 5,25,50,100",
    )
    start.add_argument("--split", type=split, help="A/B: BASELINE/CANDIDATE, e.g. 90/10")
    start.add_argument("--sticky-header", help="A/B: header whose value pins a user's version")
    start.add_argument("--soak", type=duration, default=600, help="time per step, e.g. 10m")
    start.add_argument("--min-requests", type=int)
    start.add_argument("--max-error-rate-increase", type=float)
    start.add_argument("--max-error-rate", type=float)
    start.add_argument("--max-p95-ratio", type=float)
    start.add_argument("--max-drift-psi", type=float, help="largest input PSI allowed")
    start.add_argument(
        "--bound",
        type=bound,
        action="append",
        help="custom bound on a candidate metric, e.g. error_rate=..0.01, p99_ms=..50, "
        "class_share:1=0.2..0.6, psi:X[0]=..0.2 (repeatable)",
    )
    start.set_defaults(handler=with_client(_start))
    status = verbs.add_parser(
        "status", parents=parents, help="per-version telemetry, rule verdicts, next step"
    )
    status.add_argument("id")
    status.set_defaults(handler=with_client(_status))
    ls = verbs.add_parser("list", parents=parents, help="list rollouts")
    ls.add_argument("--fleet")
    ls.add_argument("--model")
    ls.add_argument("--status")
    ls.set_defaults(handler=with_client(_list))
    for name, text in (
        ("pause", "stop advancing"),
        ("resume", "advance again"),
        ("abort", "end it: devices go back to the baseline"),
        ("promote", "move the alias to the candidate now"),
    ):
        p = verbs.add_parser(name, parents=parents, help=text)
        p.add_argument("id")
        p.set_defaults(handler=with_client(_action(name)))
