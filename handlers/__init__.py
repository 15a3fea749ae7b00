"""Serving-pod runtime: handler contract, built-in handlers, safe artifact loading and the pod server.

Depends only on ``schemas`` (a serving pod ships without the control plane). Importing this package does
nothing; ``handlers.archive`` in particular stays free of torch so other processes can inspect archives cheaply.
"""
