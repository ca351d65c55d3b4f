"""Who may touch which cache keys: the namespace policy, in one place (no gRPC here).

Three kinds of caller reach the cache service (the servicer works out which, then asks a
:class:`Namespace` about every key, pattern and invalidation):

* **admin** sees the raw keyspace and may read and write everything.
* **a service principal** (``execution``, ``marketdata``, ...) has its own keys, stored under
  ``svc:<principal>:`` without it knowing (it says ``foo``, the store holds
  ``svc:execution:foo``, answers say ``foo``). Keys under a *reference prefix* are not
  namespaced: they name the shared reference rows. ``instrument:`` and ``account:`` rows are
  readable by every service; ``apikey:`` and ``keyinfo:`` (key material) only by
  :data:`KEY_READERS`. No service may write, delete or invalidate reference rows.
* **an account** (an ``x-api-key`` caller) has its keys under ``acct:<account>:`` the same
  way, and no access to reference rows at all.

A key that "escapes" (an account writing ``acct:bob:x``) only lands deeper in its own
namespace (``acct:alice:acct:bob:x``). Patterns are confined by prefixing the namespace, so
``*`` of an account matches only its keys. Invalidations are filtered and translated back
to the caller's view (:meth:`Namespace.view_keys`, :meth:`Namespace.view_pattern`).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.cache import globs

ADMIN = "admin"
INSTRUMENT_PREFIX = "instrument:"
ACCOUNT_PREFIX = "account:"
API_KEY_PREFIX = "apikey:"
KEY_INFO_PREFIX = "keyinfo:"
#: Rows only the admin principal may write; they are never namespaced.
REFERENCE_PREFIXES: tuple[str, ...] = (INSTRUMENT_PREFIX, ACCOUNT_PREFIX, API_KEY_PREFIX, KEY_INFO_PREFIX)
#: Reference rows any service principal may read.
PUBLIC_REFERENCE_PREFIXES: tuple[str, ...] = (INSTRUMENT_PREFIX, ACCOUNT_PREFIX)
#: Reference rows holding key material, and the principals that may read them.
SECRET_REFERENCE_PREFIXES: tuple[str, ...] = (API_KEY_PREFIX, KEY_INFO_PREFIX)
KEY_READERS: frozenset[str] = frozenset({ADMIN, "execution", "marketdata", "gateway"})

SERVICE_NAMESPACE = "svc:"
ACCOUNT_NAMESPACE = "acct:"
#: Names usable in a namespace: no glob metacharacters and no ':', at most 64 characters.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
#: The longest namespace prefix ("acct:" + 64 + ":"): the store's key limit is the clients'
#: limit plus this, so a client's key is never refused because of a prefix it does not see.
MAX_NAMESPACE_BYTES = len(ACCOUNT_NAMESPACE) + 64 + 1

#: :meth:`Namespace.view_pattern`'s answer when the caller must drop everything it holds.
FLUSH = object()


class Denied(PermissionError):
    """The caller may not do this (PERMISSION_DENIED); the message says what and why."""


class Unauthenticated(PermissionError):
    """The caller's credential proves nothing (UNAUTHENTICATED), e.g. an unknown API key."""


def reference_prefix(key: str) -> str | None:
    """The reference prefix ``key`` starts with, or None."""
    for prefix in REFERENCE_PREFIXES:
        if key.startswith(prefix):
            return prefix
    return None


def _overlaps(literal: str, prefix: str) -> bool:
    """True when a glob whose literal prefix is ``literal`` may match a key starting with ``prefix``."""
    return literal.startswith(prefix) or prefix.startswith(literal)


@dataclass(frozen=True)
class Namespace:
    """One caller's view of the keyspace (build with :meth:`admin`, :meth:`service`, :meth:`account`)."""

    #: Who, for messages and logs: "admin", "service execution", "account alice".
    who: str
    #: What the store puts in front of this caller's own keys ("" for admin).
    prefix: str
    #: Reference prefixes this caller may read (admin: all, accounts: none).
    readable: tuple[str, ...]
    is_admin: bool = False
    is_account: bool = False

    @classmethod
    def admin(cls) -> Namespace:
        return cls("admin", "", REFERENCE_PREFIXES, is_admin=True)

    @classmethod
    def service(cls, principal: str) -> Namespace:
        if principal == ADMIN:
            return cls.admin()
        if not NAME_PATTERN.fullmatch(principal):
            raise Denied(f"service principal {principal!r} cannot have a cache namespace")
        readable = PUBLIC_REFERENCE_PREFIXES
        if principal in KEY_READERS:
            readable = readable + SECRET_REFERENCE_PREFIXES
        return cls(f"service {principal}", f"{SERVICE_NAMESPACE}{principal}:", readable)

    @classmethod
    def account(cls, account: str) -> Namespace:
        if not NAME_PATTERN.fullmatch(account):
            raise Denied(f"account name {account!r} cannot be a cache namespace")
        return cls(f"account {account}", f"{ACCOUNT_NAMESPACE}{account}:", (), is_account=True)

    # --- requests ------------------------------------------------------------------------
    def read_key(self, key: str) -> str:
        """The stored key a read of ``key`` names; Denied for reference rows it may not read."""
        if self.is_admin:
            return key
        prefix = reference_prefix(key)
        if prefix is None:
            return self.prefix + key
        if prefix in self.readable:
            return key
        raise Denied(f"{self.who} may not read {prefix!r} rows (key {_short(key)!r})")

    def write_key(self, key: str) -> str:
        """The stored key a write or delete of ``key`` names; Denied for reference rows."""
        if self.is_admin:
            return key
        prefix = reference_prefix(key)
        if prefix is not None:
            raise Denied(f"{self.who} may not write {prefix!r} rows (key {_short(key)!r}): only admin may")
        return self.prefix + key

    def write_pattern(self, pattern: str) -> str:
        """The stored-key glob an invalidation of ``pattern`` becomes: confined to the namespace."""
        if self.is_admin:
            return pattern
        literal = globs.literal_prefix(pattern)
        for prefix in REFERENCE_PREFIXES:
            if literal.startswith(prefix):
                raise Denied(
                    f"{self.who} may not invalidate {prefix!r} rows (pattern {_short(pattern)!r}): "
                    "only admin may"
                )
        return globs.escape(self.prefix) + pattern

    def view_key(self, stored: str) -> str:
        """``stored`` as this caller names it (the inverse of :meth:`read_key`)."""
        return stored[len(self.prefix) :] if self.prefix and stored.startswith(self.prefix) else stored

    # --- invalidations -------------------------------------------------------------------
    def view_keys(self, stored: tuple[str, ...]) -> tuple[str, ...]:
        """Of the changed ``stored`` keys, those this caller may hold, as it names them."""
        if self.is_admin:
            return stored
        prefix, cut, readable = self.prefix, len(self.prefix), self.readable
        out: list[str] = []
        for key in stored:
            if key.startswith(prefix):
                out.append(key[cut:])
            elif readable and key.startswith(readable):
                out.append(key)
        return tuple(out)

    def view_pattern(self, stored: str) -> str | object | None:
        """A stored-key glob as this caller must apply it: a glob in its terms, :data:`FLUSH`
        when it cannot be translated exactly but may cover held keys, None when it covers none."""
        if self.is_admin:
            return stored
        escaped = globs.escape(self.prefix)
        if stored.startswith(escaped):
            return stored[len(escaped) :] or None
        literal = globs.literal_prefix(stored)
        if _overlaps(literal, self.prefix):
            return FLUSH
        for prefix in self.readable:
            if literal.startswith(prefix):
                return stored  # reference keys are held under their stored names
            if prefix.startswith(literal):
                return FLUSH
        return None


class AccountResolver:
    """API key -> account, through ``lookup`` (the ``apikey:<hash>`` row's value, or None).

    An answer is kept ``ttl_ms`` (a bounded LRU of ``max_entries``), so an account's calls
    do not each read the store; a revocation made elsewhere takes effect within ``ttl_ms``,
    one made here at once (:meth:`forget`). Unknown keys are not kept (the store's own
    negative cache answers them), so a flood of made-up keys cannot push out real ones.
    """

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[str | None]],
        *,
        ttl_ms: int = 1_000,
        max_entries: int = 10_000,
        now_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_ms / 1000
        self._max_entries = max_entries
        self._now_s = now_s
        self._known: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def account_of(self, key_hash: str) -> str:
        """The account owning the key whose hash is ``key_hash``; Unauthenticated if none."""
        now = self._now_s()
        held = self._known.get(key_hash)
        if held is not None and held[1] > now:
            self._known.move_to_end(key_hash)
            return held[0]
        account = await self._lookup(key_hash)
        if account is None:
            self._known.pop(key_hash, None)
            raise Unauthenticated("the API key is not valid (unknown, revoked or expired)")
        self._known[key_hash] = (account, now + self._ttl_s)
        self._known.move_to_end(key_hash)
        while len(self._known) > self._max_entries:
            self._known.popitem(last=False)
        return account

    def forget(self, key_hash: str | None = None) -> None:
        """Drop one key's answer (or every answer)."""
        if key_hash is None:
            self._known.clear()
        else:
            self._known.pop(key_hash, None)

    def __len__(self) -> int:
        return len(self._known)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
