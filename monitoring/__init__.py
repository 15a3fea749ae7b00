"""Drift monitoring: reference profiles, windows of prediction records, drift statistics, alert rules.

The pure core lives here (``profile``, ``features``, ``detectors``, ``windows``, ``measure``, ``alerts``,
``metrics``); the bus subscriber that wires it to ``prediction-logs``, ``drift-metrics`` and ``alerts``
sits on top of it in ``monitoring.monitor``. Nothing here does I/O.
"""
