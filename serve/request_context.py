"""Per-request state of the prediction service, in context variables (each request runs in its own task).

Kept in a module of its own: the service's methods reach it through the module, which Ray Serve pickles by
reference, while a context variable itself cannot be pickled with the ASGI app.
"""

from __future__ import annotations

import contextvars

FOLLOWS_ROLLOUT: contextvars.ContextVar[bool] = contextvars.ContextVar("follows_rollout", default=False)
"""True while a request asked for no exact version: a challenger rollout (shadow or canary) applies to it."""
