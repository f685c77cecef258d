"""The one progress-bar style of the project: counts with rates on stderr, silenced by ``--quiet``."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(*, total: int, desc: str | None, unit: str, enabled: bool, leave: bool = True) -> tqdm:
    """The one progress-bar style of the project: counts with rates on stderr, silent when not ``enabled``."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=0.5,
        leave=leave,
    )
