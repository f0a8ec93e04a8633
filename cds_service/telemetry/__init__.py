"""Logs (:mod:`.logs`, JSON lines) and metrics (:mod:`.metrics`, Prometheus). A shared leaf: imports nothing of
the service.
"""
