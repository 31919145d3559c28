"""Runnable jobs, each ``python -m pipelines.<name> --help``.

Every job is a thin entry point over library code and runs unchanged on a laptop
and under ``ray job submit --working-dir .``.
"""
