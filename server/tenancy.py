"""Who is calling: the tenant of the current RPC, set by the auth interceptor.

``None`` means authentication is off and the caller sees every study. The manager checks
ownership in ``StudyManager.get``, the one door every RPC with a study id goes through, so a
new RPC cannot forget the check.
"""

from __future__ import annotations

from contextvars import ContextVar

caller: ContextVar[str | None] = ContextVar("hpod_tenant", default=None)


def visible(owner: str) -> bool:
    """Whether the current caller may see a study owned by ``owner``."""
    tenant = caller.get()
    return tenant is None or tenant == owner


def owner_for_new_study() -> str:
    return caller.get() or ""
