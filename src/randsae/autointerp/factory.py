"""Which client a config asks for, built: the one place that imports the backends.

Kept out of :mod:`.clients` (the protocol and shared types every backend imports) so that no
import cycle runs protocol -> backend -> protocol. Backends are imported inside the factory so
that choosing the local judge never loads the Anthropic SDK and vice versa.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from randsae.autointerp.cache import CachedClient, ResponseCache
from randsae.autointerp.clients import Client

#: The ``autointerp.client`` values a config may give (``auto`` is resolved by
#: :func:`choose_client_kind`).
CLIENT_KINDS: tuple[str, ...] = ("anthropic", "local")


def _autointerp_section(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    section = cfg.get("autointerp")
    return section if isinstance(section, Mapping) else cfg


def choose_client_kind(cfg: Mapping[str, Any], env: Mapping[str, str] | None = None) -> str:
    """``"anthropic"`` or ``"local"`` from ``autointerp.client`` (auto: Anthropic exactly when
    ANTHROPIC_API_KEY is set). Only the variable's presence is read here, never its value."""
    env = os.environ if env is None else env
    kind = _autointerp_section(cfg).get("client", "auto")
    if kind == "auto":
        return "anthropic" if env.get("ANTHROPIC_API_KEY") else "local"
    if kind not in CLIENT_KINDS:
        raise ValueError(f"autointerp.client must be auto, anthropic or local, not {kind!r}")
    return str(kind)


def default_client(
    cfg: Mapping[str, Any],
    *,
    cache_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Client:
    """The client a config asks for (``cfg`` is the whole config or its autointerp section).

    ``cache_dir``: wrap the client in the response cache there (and, for Anthropic, keep the
    batch journal beside it). ``kwargs`` go to the client's constructor (e.g. ``mode="batch"``
    for Anthropic, ``batch_size=`` for local).
    """
    ai = _autointerp_section(cfg)
    kind = choose_client_kind(cfg, env)
    client: Client
    if kind == "anthropic":
        from randsae.autointerp.anthropic_client import DEFAULT_MODEL, AnthropicClient

        if cache_dir is not None:
            kwargs.setdefault("journal_dir", Path(cache_dir) / "batch-journal")
        client = AnthropicClient(model=ai.get("anthropic_model") or DEFAULT_MODEL, env=env, **kwargs)
    else:
        from randsae.autointerp.local_client import LocalClient

        client = LocalClient(ai.get("local_model") or "smollm2-135m", **kwargs)
    if cache_dir is not None:
        client = CachedClient(client, ResponseCache(cache_dir))
    return client
