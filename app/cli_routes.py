"""``release deploy routes NAME``: the Gateway API routes of a model as its aliases and canary weights stand now.

The same render the controller's route sync applies (``release.route_sync`` + ``release.adapters.k8s_routes``),
printed without touching a cluster: one HTTPRoute per alias, then the HealthCheckPolicy of each routed Service.
"""

from __future__ import annotations

import argparse
import json

from release.bootstrap import App
from release.db import session_scope
from release.route_sync import desired_routes

#: The Gateway ``deploy/k8s/gateway.yaml`` creates; routes attach to it unless RELEASE_GATEWAY names another.
DEFAULT_GATEWAY = "release-gateway/model-release"


def register(deploy_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``deploy routes`` to the ``deploy`` command's subparsers."""
    text = "print the Gateway API HTTPRoutes of a model's aliases and canary weights as YAML (--json: a JSON list)"
    p = deploy_sub.add_parser("routes", help=text, description=text)
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--namespace", help="default: RELEASE_K8S_NAMESPACE")
    p.add_argument("--gateway", help=f"NAME/NAMESPACE; default: RELEASE_GATEWAY, else {DEFAULT_GATEWAY}")
    p.set_defaults(func=cmd_deploy_routes)


def cmd_deploy_routes(app: App, args: argparse.Namespace) -> int:
    """Print the routes of a model (exit 3 with what to do when the model is unknown)."""
    import yaml

    from release.adapters.k8s_routes import GatewayRef, render_routes

    settings = app.settings
    gateway = GatewayRef.parse(args.gateway or settings.gateway or DEFAULT_GATEWAY,
                               hostnames=settings.gateway_hostnames)
    with session_scope(app.engine) as session:
        routes = desired_routes(session, args.name)
    manifests = render_routes(routes, namespace=args.namespace or settings.k8s_namespace, gateway=gateway)
    if args.json:
        print(json.dumps(manifests, indent=2))
    else:
        print(yaml.safe_dump_all(manifests, sort_keys=False), end="")
    return 0
