"""rai-audit: train a PyTorch model and audit it in one report."""

from typing import Any

from audit.errors import AuditError
from audit.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["AuditError", "evaluate", "hookimpl", "train", "__version__"]

# audit.evaluate / audit.train live in audit.api, imported on first use (PEP 562): plugins import this package for
# ``hookimpl`` and must not pay for torch, pandas and the runner. audit.api imports submodules only, never this
# package's names, so there is no cycle.
_API = ("evaluate", "train")


def __getattr__(name: str) -> Any:
    if name in _API:
        from audit import api

        return getattr(api, name)
    raise AttributeError(f"module 'audit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
