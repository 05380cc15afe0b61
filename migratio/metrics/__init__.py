"""Prometheus metrics of ``migratio run``.

``hooks``: the one-line calls the engine makes where things happen (inert until
the daemon starts metrics); ``recorder``: the metrics of one daemon in a registry
of its own; ``collector``: the ledger's gauges, read at scrape time; ``endpoint``:
the ``/metrics`` server. Callers import ``from migratio.metrics import hooks as
metrics``. What the metrics mean: docs/operations.md.
"""
