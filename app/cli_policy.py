"""``release policy set|show``: the operator's release policy of a model, versioned and audited in the registry.

Uploaders cannot change policy (``policies/`` in the uploads bucket is ignored unless RELEASE_BUCKET_POLICIES opts
in); these commands, and the same routes of the management API, are how it changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.operator import whoami
from app.output import emit, plain, table
from release import policies
from release.bootstrap import App, default_policy
from release.db import session_scope
from schemas.errors import BadRequest, Reason


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``policy set`` and ``policy show`` to the top-level parser."""
    policy = sub.add_parser("policy", help="the operator's release policy of a model",
                            description="the operator's release policy of a model (versioned, audited)")
    commands = policy.add_subparsers(dest="policy_command", required=True)
    text = "validate FILE (JSON, or - for stdin) and make it NAME's policy; records a new revision and its diff"
    p = commands.add_parser("set", help=text, description=text)
    p.add_argument("name")
    p.add_argument("file")
    p.add_argument("--reason", default="manual")
    p.add_argument("--actor", default=whoami())
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_policy_set)
    text = "print NAME's policy in force (operator revision, or the installation default) and its history"
    p = commands.add_parser("show", help=text, description=text)
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_policy_show)


def _read(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(file).read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read {file}: {exc.strerror}", reason=Reason.POLICY_INVALID,
                         hint="Give the path of a JSON policy file, or - to read it from stdin.") from exc


def cmd_policy_set(app: App, args: argparse.Namespace) -> int:
    """Validate and store a new revision of a model's policy."""
    policy = policies.parse_policy(_read(args.file), webhook_prefixes=app.settings.webhook_prefixes)
    with session_scope(app.engine) as s:
        view = policies.set_policy(s, model=args.name, policy=policy, actor=args.actor, reason=args.reason)
    payload = {"model": view.model, "revision": view.revision, "actor": view.actor, "reason": view.reason,
               "diff": view.diff}
    emit(args, payload, lambda p: f"{p['model']}: policy revision {p['revision']}\n" + table(
        [{"field": k, "from": v["from"], "to": v["to"]} for k, v in p["diff"].items()], ["field", "from", "to"]))
    return 0


def cmd_policy_show(app: App, args: argparse.Namespace) -> int:
    """Print the policy in force and the revisions before it."""
    with session_scope(app.engine) as s:
        revisions = policies.history(s, args.name)
    in_force = revisions[0].policy if revisions else default_policy(app.settings)
    payload: dict[str, Any] = {
        "model": args.name, "source": "operator" if revisions else "default",
        "revision": revisions[0].revision if revisions else None, "policy": in_force.model_dump(mode="json"),
        "history": [{k: v for k, v in plain(r).items() if k != "policy"} for r in revisions]}

    def render(p: dict[str, Any]) -> str:
        head = (f"{p['model']}: revision {p['revision']} set by {p['history'][0]['actor']}" if p["history"]
                else f"{p['model']}: no operator policy; the installation default applies")
        return "\n".join([head, in_force.model_dump_json(indent=2), "",
                          table(p["history"], ["revision", "created_at", "actor", "reason"])])

    emit(args, payload, render)
    return 0
