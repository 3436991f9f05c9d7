"""Reliability tests (issue 7): bad inputs, solver limits, concurrency and lifecycle,
and hypothesis fuzzing of cone programs with known solutions and of the cones.

The helper modules (``bad_inputs``, ``fuzz``, ``_workers``) are shared with
``benchmarks/reliability_report.py``.
"""
