"""One budget of request bytes held in memory at once, shared by the HTTP and gRPC transports.

A body is counted from the moment its size is known (``Content-Length``, or each chunk as it
comes) until its answer has left; a request that would go over the budget is refused (503,
RESOURCE_EXHAUSTED) instead of growing the server. Everything runs on the event loop: no lock.
"""

from __future__ import annotations

from inferd.transport.shared_counts import SharedCount


class ByteBudget:
    """``shared``: a front-end worker's, whose limit is the server's, held with the other workers."""

    def __init__(self, limit: int, shared: SharedCount | None = None) -> None:
        if limit <= 0:
            raise ValueError(f"a byte budget must be positive, got {limit}")
        self.limit = limit
        self.used = 0
        self.shared = shared

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (and nothing reserved) when that would pass the limit."""
        if self.shared is None:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True
        if self.used + self.shared.others() + size > self.limit:
            return False
        self.used += size
        self.shared.publish(self.used)
        return True

    def give(self, size: int) -> None:
        self.used -= size
        if self.shared is not None:
            self.shared.publish(self.used)

    def refusal(self, size: int) -> str:
        held = self.used + (self.shared.others() if self.shared is not None else 0)
        return (f"the server holds {held} bytes of requests in memory and {size} more would pass "
                f"its limit of {self.limit} (--max-inflight-size); retry shortly")
