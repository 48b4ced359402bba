"""Counted skips: bad input is skipped and counted by reason, never silently dropped.

Each loader worker owns one `SkipCounter`; its counts travel with every batch it yields, so the
trainer can log them (summed over workers and ranks).
"""

import logging
import time
from collections import Counter

logger = logging.getLogger(__name__)

# Reasons counted beside the skips that are not skips: the sample is kept, cut to its limits
# (text at max_tokens, images past max_num_images). Logged and reported as "trimmed".
TRIMS = frozenset({"text_truncated", "images_over_limit"})


def outcome(reason: str) -> str:
    """'trimmed' for a sample kept but cut, 'skipped' for input left out."""
    return "trimmed" if reason in TRIMS else "skipped"


class SkipSample(Exception):
    """A document, pair or image that cannot be used. `reason` is a short snake_case key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Counts skips by reason and logs them at a limited rate (one line per reason per minute)."""

    def __init__(self, log_interval_s: float = 60.0):
        self.counts: Counter[str] = Counter()
        self._log_interval_s = log_interval_s
        self._last_logged: dict[str, float] = {}

    def count(self, reason: str, detail: str = "", n: int = 1) -> None:
        self.counts[reason] += n
        now = time.monotonic()
        if now - self._last_logged.get(reason, -float("inf")) >= self._log_interval_s:
            self._last_logged[reason] = now
            logger.warning(
                "%s (%s, %d so far)%s",
                outcome(reason),
                reason,
                self.counts[reason],
                f": {detail}" if detail else "",
            )

    def merge(self, other: "SkipCounter") -> None:
        """Add another counter's counts (without logging them again)."""
        self.counts.update(other.counts)

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def load(self, counts: dict[str, int]) -> None:
        self.counts = Counter(counts)
