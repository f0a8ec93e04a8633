"""Benchmarks (not tests): every speed claim is a ratio against a baseline measured in the same run.

Run them all with ``python -m bench`` (``--cql DIR`` adds the CQL-engine baseline; see bench/README.md); results go
to ``bench/results/latest.json`` and ``bench/results/latest.md``.
"""
