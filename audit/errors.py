"""The one exception type that means 'the input was unusable' (CLI exit code 2)."""


class AuditError(Exception):
    """Bad input or a bad option combination; its message is one line for the user."""


class TrainingDiverged(AuditError):
    """Loss or gradients became NaN/Inf; the message names the epoch and step."""
