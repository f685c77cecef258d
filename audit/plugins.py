"""The plugin manager: built-in plugins and third-party ones load through the same entry points."""

from __future__ import annotations

import importlib
import logging
import os
from importlib import metadata

import pluggy

from audit import hookspecs
from audit.errors import AuditError
from audit.report import MetricSpec

ENTRY_POINT_GROUP = "audit.plugins"
# Comma-separated plugin names to load; unset loads all, an empty string loads none.
LOAD_PLUGINS_ENV = "AUDIT_PLUGINS"

# Registered in every run, before the entry points, exactly as a third-party plugin would be (AUDIT_PLUGINS
# does not filter them: the core's own metrics are always declared).
DEFAULT_PLUGINS = {
    "core": "audit.default_plugins.core",
    "compression": "audit.default_plugins.compression",
}

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
    for name, module in DEFAULT_PLUGINS.items():
        pm.register(importlib.import_module(module), name=name)
    allowed = _allowed_names()
    entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    unknown = sorted((allowed or set()) - {ep.name for ep in entry_points})
    if unknown:
        installed = ", ".join(sorted({ep.name for ep in entry_points})) or "none"
        raise AuditError(
            f"{LOAD_PLUGINS_ENV} names unknown plugin(s) {', '.join(unknown)}; installed: {installed}"
        )
    for entry_point in entry_points:
        if allowed is not None and entry_point.name not in allowed:
            continue
        if pm.has_plugin(entry_point.name):
            continue
        plugin = entry_point.load()
        pm.register(plugin, name=entry_point.name)
        log.debug("loaded plugin %s from %s", entry_point.name, entry_point.value)
    return pm


def collect_metric_specs(pm: pluggy.PluginManager) -> list[MetricSpec]:
    """Every metric spec the registered plugins declare (the core's default plugin first), concatenated."""
    return [spec for group in reversed(pm.hook.audit_metric_specs()) for spec in (group or [])]


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
        default = ("rai-audit", metadata.version("rai-audit")) if name in DEFAULT_PLUGINS else ("?", "?")
        dist_name, version = dists.get(name, default)
        rows.append({"name": name, "distribution": dist_name, "version": version, "hooks": hooks})
    return rows
