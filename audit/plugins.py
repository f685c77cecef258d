"""The plugin manager: built-in plugins and third-party ones load through the same entry points."""

from __future__ import annotations

import logging
import os
from importlib import metadata

import pluggy

from audit import hookspecs

ENTRY_POINT_GROUP = "audit.plugins"
# Comma-separated plugin names to load; unset loads all, an empty string loads none.
LOAD_PLUGINS_ENV = "AUDIT_PLUGINS"

log = logging.getLogger(__name__)


def _allowed_names() -> set[str] | None:
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """Return a new plugin manager with every allowed plugin from the ``audit.plugins`` entry points."""
    pm = pluggy.PluginManager("audit")
    pm.add_hookspecs(hookspecs)
    allowed = _allowed_names()
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and entry_point.name not in allowed:
            continue
        if pm.has_plugin(entry_point.name):
            continue
        plugin = entry_point.load()
        pm.register(plugin, name=entry_point.name)
        log.debug("loaded plugin %s from %s", entry_point.name, entry_point.value)
    return pm


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, object]]:
    """Return name, distribution, version and implemented hooks for each registered plugin."""
    dists = {}
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                dists[ep.name] = (dist.metadata["Name"], dist.version)
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        dist_name, version = dists.get(name, ("?", "?"))
        rows.append({"name": name, "distribution": dist_name, "version": version, "hooks": hooks})
    return rows
