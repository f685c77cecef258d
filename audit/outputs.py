"""Where a run's files go and how they are written: the model, report.json and its renderings as one set.

A set is written whole into a staging folder beside the output folder (``.<name>.staging-<pid>-XXXX``) and
swapped in with one rename (Linux: ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames), so a reader sees
the old set or the new one, never a mix. The folder's other files (a user's own) are hard-linked (else copied)
into the staging folder first, so they survive. Leftovers of a killed run are removed by the next run. When the
output folder is the working directory (or holds it) or a mount point, it cannot be swapped: the files are then
replaced one by one, report.json last, and ``audit verify`` names any file an interruption left behind.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.config import RunConfig
from audit.errors import AuditError
from audit.render import render_beside
from audit.report import Report
from audit.signing import manifest_of, sign_report

# The files of a run's set (report.json's renderings keep a renamed report's stem).
SET_FILES = ("model.pt", "report.html", "report.md", "model_card.md", "report.json")
# TEST HOOK, for tests/test_output_set.py only: with AUDIT_TEST_KILL_AFTER_WRITES=N the process SIGKILLs itself
# after the Nth step of writing a set (each file written is a step, the swap the last), to prove that a run killed
# mid-write leaves a whole set. Unset in normal use.
KILL_AFTER_WRITES_ENV = "AUDIT_TEST_KILL_AFTER_WRITES"
_LEFTOVER = re.compile(r"\.(?P<folder>.+)\.(?P<kind>staging|old)-(?P<pid>\d+)-[^/]+")
# temporary files of set files (".report.json.<pid>.<random>.tmp"; older versions wrote no pid)
_TEMP = re.compile(
    r"\.(?P<name>model\.pt|model_card\.md|.+\.(?:json|html|md))\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp"
)
_UMASK_LOCK = threading.Lock()


NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


def default_out_dir(config: RunConfig) -> Path:
    """``runs/<data name>`` (``-eval`` for evaluate) unless --out says otherwise."""
    if config.out:
        return Path(config.out)
    stem = Path(config.data).stem if config.data not in ("adult", "digits") else config.data
    return Path("runs") / (stem + ("-eval" if config.command == "evaluate" else ""))


def check_writable(path: Path, *, folder: bool, what: str) -> None:
    """Refuse, before any work, an output path that cannot be written: a folder that is a file, a file that is a
    folder, a path under a file, or a name too long for the file system (one line naming the option)."""
    # the name's length first: asking a too-long path whether it exists raises OSError
    long = [
        part for part in path.parts if len(os.fsencode(part)) > NAME_MAX - 40
    ]  # room for staging suffixes
    if long:
        raise AuditError(
            f"{what} {path}: the name {long[0][:40]}... is longer than this file system allows "
            f"({NAME_MAX} bytes, less the room rai-audit needs for temporary names)"
        )
    if folder and path.exists() and not path.is_dir():
        raise AuditError(f"{what} {path} is an existing file; expected a folder (or a new name)")
    if not folder and path.is_dir():
        raise AuditError(f"{what} {path} is a folder; expected a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AuditError(
                    f"{what} {path} lies under {parent}, which is a file; expected a folder path"
                )
            break


def write_outputs(
    out_dir: Path, report: Report, model_bytes: bytes | None, sign_key: Ed25519PrivateKey | None = None
) -> dict[str, Any]:
    """Write a run's files into ``out_dir`` as one set (model.pt, report.json, renderings); return the report."""
    return write_report_set(out_dir / "report.json", report.to_dict(), model_bytes, sign_key=sign_key)


def write_report_set(
    report_path: Path,
    data: dict[str, Any],
    model_bytes: bytes | None = None,
    *,
    sign_key: Ed25519PrivateKey | None = None,
    carried: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Render a report, list every file's SHA-256 in its ``manifest``, sign it, write the set; return it as written.

    ``carried``: manifest entries of files already beside the report that this write keeps (gate's model.pt).
    """
    body = {k: v for k, v in data.items() if k not in ("manifest", "signature")}
    # rendered first (a rendering failure writes nothing); the renderings show content_sha256, not the manifest
    contents = {path.name: text.encode() for path, text in render_beside(body, report_path).values()}
    if model_bytes is not None:
        contents = {"model.pt": model_bytes, **contents}
    body["manifest"] = dict(sorted({**(carried or {}), **manifest_of(contents)}.items()))
    if sign_key is not None:
        body = sign_report(body, sign_key)
    contents[report_path.name] = json.dumps(body, indent=2, allow_nan=False).encode()
    write_set(report_path.parent, contents)
    return body


def write_set(folder: Path, contents: dict[str, bytes]) -> None:
    """Replace the files ``contents`` names in ``folder`` all at once, keeping the folder's other files."""
    folder = Path(folder).resolve()
    if folder.exists() and not folder.is_dir():
        raise AuditError(f"output folder {folder} is a file; expected a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(folder)
    step = _kill_hook()
    if not (_swappable(folder) and _stage_and_swap(folder, contents, step)):
        _replace_one_by_one(folder, contents, step)


def _stage_and_swap(folder: Path, contents: dict[str, bytes], step: Callable[[], None]) -> bool:
    """Write the set into a staging folder and swap it in; False (nothing changed) when it cannot be staged."""
    try:
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.staging-{os.getpid()}-"))
    except OSError:
        return False
    try:
        try:
            if folder.is_dir():
                _carry_over(folder, staging, skip=set(contents))
        except OSError:
            return False  # a file that can be neither linked nor copied: replace the files in place instead
        for name, body in contents.items():
            _write_new(staging / name, body)
            step()
        os.chmod(staging, _folder_mode(folder))
        old = _swap(staging, folder)
        step()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # staging left over, or the old set after an exchange


def _carry_over(folder: Path, staging: Path, skip: set[str]) -> None:
    """Hard-link (else copy) every entry of ``folder`` but the set's own files into ``staging``."""
    for entry in os.scandir(folder):
        if entry.name in skip or _TEMP.fullmatch(entry.name):
            continue
        target = staging / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, target)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)  # refuses FIFOs and devices (an OSError), never blocks on one


def _swap(staging: Path, folder: Path) -> Path | None:
    """Put ``staging`` in ``folder``'s place; return where the old folder now is (None when there was none)."""
    if not folder.exists():
        os.rename(staging, folder)
        return None
    if _exchange(staging, folder):
        return staging
    aside = staging.with_name(staging.name.replace(".staging-", ".old-", 1))
    os.rename(folder, aside)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(aside, folder)
        raise
    return aside


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    renameat2 = getattr(_libc(), "renameat2", None) if sys.platform.startswith("linux") else None
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # a file system without exchange: two renames instead
    raise OSError(code, os.strerror(code), str(b))


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _swappable(folder: Path) -> bool:
    """Whether ``folder`` may be renamed: not the working directory or one holding it, not a mount point."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        cwd = None
    if cwd is not None and (folder == cwd or folder in cwd.parents):
        return False
    return not (folder.is_dir() and os.path.ismount(folder))


def _replace_one_by_one(folder: Path, contents: dict[str, bytes], step: Callable[[], None]) -> None:
    """Write every file to a temporary file first, then rename each into place, the JSON last."""
    folder.mkdir(parents=True, exist_ok=True)
    temps: dict[str, str] = {}
    try:
        for name, body in contents.items():
            temps[name] = _write_temp(folder, name, body)
            step()
        for name in sorted(temps, key=lambda n: n.endswith(".json")):
            os.replace(temps.pop(name), folder / name)
        step()
    finally:
        for temp in temps.values():
            Path(temp).unlink(missing_ok=True)


def clean_leftovers(folder: Path) -> None:
    """Remove what a killed run left: staging and set-aside folders beside ``folder``, temporary files in it.

    Only a dead process's leftovers go (the name holds its pid). If ``folder`` itself is missing (killed between
    the two renames of a system without atomic exchange), the set-aside old folder is put back first.
    """
    if folder.parent.is_dir():
        for entry in sorted(folder.parent.iterdir(), key=lambda p: ".old-" not in p.name):
            match = _LEFTOVER.fullmatch(entry.name)
            if not match or match["folder"] != folder.name or _alive(int(match["pid"])) or not entry.is_dir():
                continue
            if match["kind"] == "old" and not folder.exists():
                os.rename(entry, folder)
            else:
                shutil.rmtree(entry, ignore_errors=True)
    if folder.is_dir():
        for entry in folder.iterdir():
            match = _TEMP.fullmatch(entry.name)
            if match and entry.is_file() and not (match["pid"] and _alive(int(match["pid"]))):
                entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":
        return True  # (Windows' os.kill would end the process: leave its leftovers alone)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def _kill_hook() -> Callable[[], None]:
    """The test hook (see KILL_AFTER_WRITES_ENV): a step counter that SIGKILLs this process at step N."""
    limit = os.environ.get(KILL_AFTER_WRITES_ENV, "")
    if not limit.isdigit():
        return lambda: None
    counter = itertools.count(1)

    def step() -> None:
        """Count one write step; at step N, SIGKILL this process."""
        if next(counter) == int(limit):
            os.kill(os.getpid(), signal.SIGKILL)

    return step


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc), else set and reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _folder_mode(folder: Path) -> int:
    try:
        return folder.stat().st_mode & 0o7777
    except OSError:
        return 0o777 & ~current_umask()


def _write_new(path: Path, body: bytes) -> None:
    """Create ``path`` (mode 0666 less the umask, as any new file) and write ``body`` to disk."""
    with path.open("xb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())


def _write_temp(folder: Path, name: str, body: bytes) -> str:
    """A temporary file beside ``name`` holding ``body``, with the mode a new file gets under the umask."""
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.chmod(temp, 0o666 & ~current_umask())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return temp


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = content.encode() if isinstance(content, str) else content
    temp = _write_temp(path.parent, path.name, body)
    try:
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
