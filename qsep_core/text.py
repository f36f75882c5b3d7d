"""Small helpers for the text qsep shows users (messages, tables, reports)."""
from __future__ import annotations

__all__ = ["plural"]


def plural(n: int, word: str) -> str:
    """``plural(1, "class")`` -> ``"1 class"``, ``plural(2, "class")`` -> ``"2 classes"``, ``plural(0, "event")`` -> ``"0 events"``."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}es" if word.endswith(("s", "sh", "ch", "x")) else f"{n} {word}s"
