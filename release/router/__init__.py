"""The router: the one address clients use. Resolves alias -> version -> pods and proxies the request.

One module per job: ``route_table`` (resolution and its TTL cache), ``pod_client`` (forwarding to a version's pods
and when to try another), ``proxy`` (the HTTP endpoints, headers and error answers), ``prediction_log``
(publishing what is logged for drift monitoring off the request path; the records come from
``schemas.prediction_records``, which the pods share), ``metrics``.
The names below are the router's public surface; importers need nothing else.
"""

from release.router.metrics import RouterMetrics
from release.router.prediction_log import PredictionLogger
from release.router.proxy import Router, build_router_app
from release.router.route_table import RouteTable, Target

__all__ = ["PredictionLogger", "RouteTable", "Router", "RouterMetrics", "Target", "build_router_app"]
