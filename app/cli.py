"""``release``: the one command. Thin: parse arguments, call one service function, print a table or JSON.

Exit codes: 0 success (rejected artifacts included: rejecting them is success), 1 internal failure,
2 usage error, 3 a refused operation (not found, conflict, invalid transition) with what to do next.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from app.cli_monitoring import register as register_monitoring
from app.cli_policy import register as register_policy
from app.operator import whoami
from app.output import cell, emit, plain, table
from release import journal, registry
from release.bootstrap import App, bootstrap, controller_subscriptions, wants_gpu
from release.controller import Step
from release.db import session_scope
from release.identity import new_token
from release.settings import Settings
from schemas.errors import ReleaseError
from schemas.events import Topic
from schemas.states import VersionState

log = structlog.get_logger(__name__)

#: The roles of ``release up --only`` (the same tuple as ``app.stack.ROLES``, which imports uvicorn).
ROLES = ("all", "controller", "router", "api", "monitor", "intake")


# ------------------------------------------------------------------------------------------------ commands
def cmd_models(app: App, args: argparse.Namespace) -> int:
    """List models."""
    with session_scope(app.engine) as s:
        models = registry.list_models(s)
    emit(args, models, lambda ms: table([plain(m) for m in ms],
                                          ["name", "versions", "latest", "aliases", "created_at"]))
    return 0


def cmd_versions(app: App, args: argparse.Namespace) -> int:
    """List the versions of a model."""
    state = VersionState(args.state) if args.state else None
    with session_scope(app.engine) as s:
        versions = registry.list_versions(s, args.name, state=state, limit=args.limit, newest_first=True)
    rows = [{"version": v.version, "state": v.state, "reason": v.state_reason, "digest": v.digest[:19],
             "metrics": v.metrics, "created_at": v.created_at} for v in versions]
    emit(args, versions, lambda _v: table(rows, ["version", "state", "reason", "digest", "created_at"]))
    return 0


def cmd_aliases(app: App, args: argparse.Namespace) -> int:
    """List the aliases of a model."""
    with session_scope(app.engine) as s:
        aliases = registry.list_aliases(s, args.name)
    emit(args, aliases, lambda a: table([plain(x) for x in a], ["name", "version", "revision", "updated_at"]))
    return 0


def cmd_show(app: App, args: argparse.Namespace) -> int:
    """Show one version: state, manifest summary, gate report, deployment, history."""
    with session_scope(app.engine) as s:
        view = registry.resolve(s, args.name, args.version)
        report = registry.latest_gate_report(s, view.id)
        deployment = registry.get_deployment(s, view.id)
        history = [e for e in registry.audit_log(s, model=args.name, limit=500) if e.version == view.version]
    payload = {"version": view, "gate_report": report,
               "deployment": deployment.model_dump(mode="json") if deployment else None,
               "history": [h.model_dump(mode="json") for h in history]}

    def render(_p: Any) -> str:
        lines = [f"{view.model} {view.version}  state={view.state}  ({view.state_reason or '-'})",
                 f"  digest     {view.digest}", f"  artifact   {view.artifact_uri}",
                 f"  format     {view.format}  handler={view.manifest.get('handler')}",
                 f"  metrics    {cell(view.metrics)}"]
        if deployment:
            lines.append(f"  deployment {deployment.status} on {deployment.backend}: "
                         f"{', '.join(deployment.endpoints) or '-'}")
            if deployment.log_excerpt:
                lines += ["  pod log (last lines):", *("    " + x for x in deployment.log_excerpt.splitlines()[-15:])]
        if report:
            lines.append(f"  gates      {'PASSED' if report.get('passed') else 'FAILED'}")
            for gate in report.get("gates", []):
                mark = "ok  " if gate.get("passed") else "FAIL"
                lines.append(f"    {mark} {gate.get('name')}: value={gate.get('value')} "
                             f"threshold={gate.get('threshold')} {gate.get('detail', '')}".rstrip())
        lines.append("  history")
        lines += [f"    {h.at:%Y-%m-%d %H:%M:%S} {h.actor:<12} {h.action:<22} {h.reason}" for h in history[-20:]]
        return "\n".join(lines)

    emit(args, payload, render)
    return 0


def cmd_events(app: App, args: argparse.Namespace) -> int:
    """The event journal, newest last."""
    with session_scope(app.engine) as s:
        rows = journal.recent(s, limit=args.limit, model=args.model)
    events = [r.envelope for r in rows]
    lines = [{"time": r.created_at, "topic": r.topic,
              "type": r.type.removeprefix("dev.modelrelease.").removesuffix(".v1"), "subject": r.subject,
              "summary": _summary(r.envelope.get("data", {}))} for r in rows]
    emit(args, events, lambda _e: table(lines, ["time", "topic", "type", "subject", "summary"]))
    return 0


def _summary(data: dict[str, Any]) -> str:
    keys = ("state", "alias", "passed", "reason", "error", "severity", "restored_version")
    return " ".join(f"{k}={data[k]}" for k in keys if k in data and data[k] not in (None, ""))[:120]


def _operate(app: App, args: argparse.Namespace, step: Step | None) -> int:
    """Finish an audited operation: process its steps with --wait, then report where the version went."""
    if args.wait:
        app.drain_controller()
    emit(args, step, lambda s: "nothing to do" if s is None
          else f"{s.model} {s.version}: {s.before} -> {s.after}" + (f" ({s.note})" if s.note else ""))
    return 0


def cmd_promote(app: App, args: argparse.Namespace) -> int:
    """Send a version to PROD by hand (gates skipped), audited."""
    return _operate(app, args, app.controller.promote(args.name, args.version, actor=args.actor,
                                                      reason=args.reason))


def cmd_rollback(app: App, args: argparse.Namespace) -> int:
    """Put PROD back on its previous version, audited."""
    return _operate(app, args, app.controller.rollback(args.name, actor=args.actor, reason=args.reason))


def cmd_retry(app: App, args: argparse.Namespace) -> int:
    """Release a rejected, failed or rolled-back version again through gates and canary, audited."""
    return _operate(app, args, app.controller.retry(args.name, args.version, actor=args.actor,
                                                    reason=args.reason))


def cmd_run(app: App, args: argparse.Namespace) -> int:
    """Process everything now in the bucket through the whole flow, then stop the pods and exit."""
    if not args.until_idle:
        print("release run needs --until-idle (or use `release up` to keep running)", file=sys.stderr)
        return 2
    started = time.monotonic()
    app.ensure_subscriptions()
    try:
        results = app.intake.reconcile(final=True)
        for result in results:
            log.info("intake", artifact=result.artifact, status=result.status, reason=result.reason)
        controller = app.controller
        for model, version in controller.resume_all():
            _guarded(controller.reconcile, model, version)
        handled = app.drain_controller()
        controller.retire_superseded(ignore_grace=True)
    finally:
        app.close()
    with session_scope(app.engine) as s:
        versions = [v for m in registry.list_models(s) for v in registry.list_versions(s, m.name)]
        aliases = {m.name: m.aliases for m in registry.list_models(s)}
    summary = {"artifacts": [plain(r) for r in results], "events_handled": handled,
               "versions": [{"model": v.model, "version": v.version, "state": v.state, "reason": v.state_reason}
                            for v in versions],
               "aliases": aliases, "seconds": round(time.monotonic() - started, 2)}
    emit(args, summary, lambda s: table(s["versions"], ["model", "version", "state", "reason"])
          + "\n\n" + table([{"model": k, "aliases": v} for k, v in s["aliases"].items()], ["model", "aliases"]))
    return 0


def _guarded(step: Callable[[str, str], object], model: str, version: str) -> None:
    try:
        step(model, version)
    except ReleaseError as error:
        log.warning("resume.failed", error=str(error))


def cmd_up(app: App, args: argparse.Namespace) -> int:
    """Run the whole stack, or one role of it (``--only``), until stopped."""
    from app.stack import run_stack

    return run_stack(app, role=args.only)


def cmd_setup(app: App, args: argparse.Namespace) -> int:
    """Create the topics, dead-letter topics and consumer subscriptions; the store was migrated by bootstrap."""
    from monitoring.monitor import subscriptions as monitor_subscriptions

    settings = app.settings
    specs = [*controller_subscriptions(settings),
             *monitor_subscriptions(ack_deadline_s=settings.ack_deadline_s, max_attempts=settings.max_attempts)]
    topics = list(Topic)
    try:
        app.bus.setup(topics, specs)
    finally:
        app.close()
    summary = {"bus": settings.bus, "store": "migrated",
               "topics": [str(t) for t in topics] if settings.bus == "pubsub" else [],
               "subscriptions": [{"name": s.name, "topic": str(s.topic), "max_attempts": s.max_attempts}
                                 for s in specs]}
    emit(args, summary, lambda p: f"bus {p['bus']}: topics {', '.join(p['topics']) or '(none on this bus)'}\n"
          + table(p["subscriptions"], ["name", "topic", "max_attempts"]))
    return 0


def cmd_deploy_render(app: App, args: argparse.Namespace) -> int:
    """Print the Kubernetes objects that would serve a registered version (what the controller applies)."""
    import yaml

    from release.adapters.k8s_manifests import ServingOptions, render_version
    from release.deployment_spec import deployment_spec

    with session_scope(app.engine) as s:
        view = registry.resolve(s, args.name, args.version)
    # The model's policy decides (one nvidia-l4 GPU by default) unless --gpu/--no-gpu or RELEASE_GPU=off says.
    spec = deployment_spec(view, gpu=args.gpu if args.gpu is not None else wants_gpu(app.settings))
    options = ServingOptions(image=args.image or app.settings.k8s_image,
                             **({"accelerator": args.accelerator} if args.accelerator else {}))
    manifests = render_version(spec, namespace=args.namespace or app.settings.k8s_namespace, options=options)
    if args.json:
        print(json.dumps(manifests, indent=2))
    else:
        print(yaml.safe_dump_all(manifests, sort_keys=False), end="")
    return 0


def cmd_token(_app: App, args: argparse.Namespace) -> int:
    """Print a new token and the line that admits it in RELEASE_API_TOKENS_FILE (which stores only its hash)."""
    token, line = new_token(args.name)
    emit(args, {"name": args.name, "token": token, "line": line},
         lambda p: f"token for {p['name']} (shown once):\n  {p['token']}\n"
                   f"add to RELEASE_API_TOKENS_FILE:\n  {p['line']}")
    return 0


def cmd_demo(_app: App, args: argparse.Namespace) -> int:
    """The demo (``make demo``): three versions through the whole flow; ``--serve`` leaves the stack up."""
    from app.demo import main as demo_main

    return demo_main(["--serve"] if args.serve else [])


def cmd_dead_letters(app: App, args: argparse.Namespace) -> int:
    """Events that failed every attempt, with their last error; --redrive puts them back."""
    if args.redrive:
        count = app.bus.redrive(args.redrive)
        emit(args, {"redriven": count, "subscription": args.redrive}, lambda p: f"redriven {p['redriven']}")
        return 0
    rows = [{"subscription": d.subscription, "type": d.event_type, "event_id": d.event_id, "attempts": d.attempts,
             "error": d.error, "at": d.at} for d in app.bus.dead_letters()]
    emit(args, rows, lambda r: table(r, ["at", "subscription", "type", "attempts", "error"]))
    return 0


# ------------------------------------------------------------------------------------------------ parser
def _add_deploy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deploy = sub.add_parser("deploy", help="Kubernetes serving objects", description="Kubernetes serving objects")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)
    text = "print the Kubernetes manifests of a registered version as YAML (--json: a JSON list)"
    p = deploy_sub.add_parser("render", help=text, description=text)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_deploy_render)
    p.add_argument("name")
    p.add_argument("version", help="a version string or an alias")
    p.add_argument("--namespace", help="default: RELEASE_K8S_NAMESPACE")
    p.add_argument("--image", help="serving pod image; default: RELEASE_K8S_IMAGE")
    p.add_argument("--accelerator", help="GKE accelerator label value, e.g. nvidia-l4")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="request GPUs (default: the model's serving policy; none under RELEASE_GPU=off)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to generate the CLI table in the README)."""
    parser = argparse.ArgumentParser(prog="release", description="Event-driven model release system.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable[[App, argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    p = command("up", cmd_up, "run the whole stack (or one role of it) until stopped")
    p.add_argument("--only", choices=ROLES, default="all",
                   help="run one role of the control plane (a Kubernetes Deployment each); default: all")
    command("setup", cmd_setup, "create topics, dead-letter topics and subscriptions; migrate the store")
    _add_deploy(sub)
    p = command("run", cmd_run, "process everything in the bucket through the whole flow")
    p.add_argument("--until-idle", action="store_true", help="exit once no work is pending")
    command("models", cmd_models, "list models")
    p = command("versions", cmd_versions, "list the versions of a model")
    p.add_argument("name")
    p.add_argument("--state", choices=[s.value for s in VersionState])
    p.add_argument("--limit", type=int, default=None)
    p = command("aliases", cmd_aliases, "list the aliases of a model")
    p.add_argument("name")
    p = command("show", cmd_show, "show one version (a version string or an alias)")
    p.add_argument("name")
    p.add_argument("version")
    p = command("events", cmd_events, "the event journal, newest last")
    p.add_argument("--model")
    p.add_argument("--limit", type=int, default=50)
    for name, func, text in (("promote", cmd_promote, "move PROD to a version by hand (gates skipped)"),
                             ("retry", cmd_retry, "release a settled version again (deploy, gates, canary)"),
                             ("rollback", cmd_rollback, "move PROD back to its previous version")):
        p = command(name, func, text)
        p.add_argument("name")
        if name != "rollback":
            p.add_argument("version")
        p.add_argument("--reason", default="manual")
        p.add_argument("--actor", default=whoami())
        p.add_argument("--wait", action="store_true", help="process the resulting steps before returning")
    p = command("token", cmd_token, "make a named API token: prints the token once and its tokens-file line")
    p.add_argument("action", choices=["new"])
    p.add_argument("name", help="the actor its writes are audited under (a person, a team, a pipeline)")
    p = command("dead-letters", cmd_dead_letters, "events that failed every attempt")
    p.add_argument("--redrive", metavar="SUBSCRIPTION")
    p = command("demo", cmd_demo, "train three digits versions and run them through the flow (make demo)")
    p.add_argument("--serve", action="store_true", help="then keep the stack running and print the dashboard URL")
    register_monitoring(sub, command)
    register_policy(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``release`` command."""
    args = build_parser().parse_args(argv)
    settings = Settings()
    try:
        app = bootstrap(settings)
        return int(args.func(app, args))
    except ReleaseError as error:
        body = error.to_dict()
        if getattr(args, "json", False):
            print(json.dumps({"error": body}, indent=2), file=sys.stderr)
        else:
            print(f"error: {error.message} [{error.reason}]\n  next: {error.hint}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130




if __name__ == "__main__":
    sys.exit(main())
