"""What a job raises when it is not failing, only early (Slack's Retry-After, a busy lock, not due yet)."""

from __future__ import annotations


class RetryLater(Exception):
    """Not a failure: try again after `delay_ms`."""

    def __init__(self, delay_ms: int) -> None:
        super().__init__(f"retry in {delay_ms} ms")
        self.delay_ms = delay_ms
