"""Store-URL facts that need no store package: the Redis Cluster schemes and `redact_url` (used in
messages about any URL, also where the `redis` extra is not installed)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["CLUSTER_SCHEMES", "redact_url"]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def redact_url(url: str) -> str:
    """`url` with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    netloc = (parts.username or "") + ":***@" + (parts.hostname or "")
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
