"""Redis-style glob patterns, matched the same way on every level.

InvalidatePattern takes a glob that Redis evaluates itself (SCAN MATCH) on L2; L1 and
L3 must agree with it key for key, so this module implements Redis's rules rather than
:mod:`fnmatch`'s: ``*`` any run of characters (``/`` included), ``?`` one character,
``[abc]``, ``[a-z]``, ``[^a]`` classes, and a backslash escaping the next character.
"""

from __future__ import annotations

import re
from functools import lru_cache

_META = frozenset("*?[\\")


class GlobError(ValueError):
    """A pattern this module (and therefore the cache) refuses, e.g. an unterminated ``[``."""


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """A compiled regular expression that fully matches exactly the keys ``pattern`` matches."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            if i + 1 == n:
                raise GlobError(f"pattern {pattern!r} ends with a lone backslash")
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            i, cls = _char_class(pattern, i + 1)
            out.append(cls)
            continue
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _char_class(pattern: str, i: int) -> tuple[int, str]:
    """Translate the class starting after ``[`` at ``i``; return the index after ``]`` and the regex."""
    n = len(pattern)
    negate = i < n and pattern[i] == "^"
    if negate:
        i += 1
    parts: list[str] = []
    while i < n and pattern[i] != "]":
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            i += 1
            ch = pattern[i]
        if i + 2 < n and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            hi = pattern[i + 2]
            if hi == "\\" and i + 3 < n:
                i += 1
                hi = pattern[i + 2]
            lo, hi = min(ch, hi), max(ch, hi)  # Redis accepts reversed ranges
            parts.append(f"{re.escape(lo)}-{re.escape(hi)}")
            i += 3
            continue
        parts.append(re.escape(ch))
        i += 1
    if i >= n:
        raise GlobError(f"pattern {pattern!r} has an unterminated '['")
    if not parts:
        # Redis's "[]" matches nothing and "[^]" any one character.
        return i + 1, "." if negate else "(?!)"
    return i + 1, ("[^" if negate else "[") + "".join(parts) + "]"


def matches(pattern: str, key: str) -> bool:
    """True when ``key`` matches the Redis glob ``pattern``."""
    return compile_glob(pattern).fullmatch(key) is not None


def literal_prefix(pattern: str) -> str:
    """The characters every match must start with (up to the first wildcard), escapes resolved."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        if ch in _META:
            break
        out.append(ch)
        i += 1
    return "".join(out)


def escape(text: str) -> str:
    """``text`` as a glob that matches only itself (for prefixing a pattern with a namespace)."""
    return "".join("\\" + ch if ch in _META or ch == "]" else ch for ch in text)
