"""Orchard: feature, training and inference pipelines on Ray.

The top-level packages split the work the way the FTI architecture does:
``features`` (what a feature is), ``pipelines`` (runnable jobs), ``serve`` (the
prediction service). ``orchard`` holds what they share: configuration, storage,
the Ray runtime, the model registry and the command line.
"""

__version__ = "0.1.0"
