"""rai-audit: train a PyTorch model and audit it in one report."""

from audit.errors import AuditError
from audit.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["AuditError", "hookimpl", "__version__"]
