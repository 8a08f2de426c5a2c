"""Small presentation helpers the tabs share: durations and page numbers."""

from __future__ import annotations

import math

PAGE_SIZE = 20


def format_duration(seconds: float | None) -> str:
    """``75 -> '1:15'``, ``3725 -> '1:02:05'``; unknown or negative -> '—'."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "—"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def page_count(total: int, page_size: int = PAGE_SIZE) -> int:
    return max(1, math.ceil(total / page_size))


def clamp_page(page: float | None, total: int, page_size: int = PAGE_SIZE) -> int:
    """A typed page number made valid: empty or below 1 -> 1, past the end -> the last page."""
    wanted = 1 if page is None else int(page)
    return min(max(wanted, 1), page_count(total, page_size))


def page_label(page: int, total: int, search: str = "", page_size: int = PAGE_SIZE) -> str:
    what = f"{total} instruction{'s' if total != 1 else ''}"
    if search.strip():
        what += f" matching “{search.strip()}”"
    return f"{what} · page {page} of {page_count(total, page_size)}"
