"""The durable spool (SPEC §8): one interface, backends chosen by `spool.url`."""

from __future__ import annotations

import socket

from relay.config import RelayConfig
from relay.errors import ConfigError
from relay.spool.base import DEFAULT_PROGRESS_FSYNC, SharedSpool, Spool
from relay.spool.sqlite import DEFAULT_COMMIT_DELAY, SqliteSpool, sqlite_path

DEFAULT_LEASE = 30.0


def spool_for_url(
    url: str,
    *,
    node: str = "",
    lease: float = DEFAULT_LEASE,
    progress_fsync: float = DEFAULT_PROGRESS_FSYNC,
    commit_delay: float = DEFAULT_COMMIT_DELAY,
) -> Spool:
    """The backend for a `spool.url`: SQLite (embedded) or PostgreSQL (shared by several nodes).

    `node` and `lease` matter to the shared backend only: the name under which this relay
    claims jobs, and how long a claim holds without renewal before another node may take it.
    `progress_fsync` (`spool.progress_fsync`): see `relay.spool.base.Spool`. `commit_delay`
    (`spool.commit_delay`, SQLite only): see `relay.spool.sqlite`.
    """
    if url.startswith("sqlite:///"):
        return SqliteSpool(
            sqlite_path(url), progress_fsync=progress_fsync, commit_delay=commit_delay
        )
    if url.startswith(("postgresql://", "postgres://")):
        try:
            # Imported here: the SQLite path needs no PostgreSQL driver (the `postgres` extra).
            from relay.spool.postgres import PostgresSpool
        except ImportError as exc:
            raise ConfigError(
                f"spool.url is PostgreSQL but its driver is missing ({exc}): "
                "pip install 'sms-relay[postgres]'"
            ) from exc
        return PostgresSpool(url, node=node, lease=lease, progress_fsync=progress_fsync)
    raise ConfigError(f"spool.url {url.split(':', 1)[0]}: backend not available in this build")


def spool_for_config(cfg: RelayConfig) -> Spool:
    """The daemon's spool; a node's default name is `<hostname>:<smtp port>`, unique per host."""
    node = cfg.spool.node or f"{socket.gethostname()}:{cfg.smtp.port}"
    return spool_for_url(
        cfg.spool.url,
        node=node,
        lease=cfg.spool.lease,
        progress_fsync=cfg.spool.progress_fsync,
        commit_delay=cfg.spool.commit_delay,
    )


__all__ = ["SharedSpool", "Spool", "SqliteSpool", "spool_for_config", "spool_for_url"]
