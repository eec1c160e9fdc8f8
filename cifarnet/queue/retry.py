"""Moved to `cifarnet.tracking.retry` (kept until `queue/` goes)."""

from cifarnet.tracking.retry import *  # noqa: F401,F403
from cifarnet.tracking.retry import retry_setup, retry_startup, retrying_methods  # noqa: F401
