"""Who wrote a report and what it covers: Ed25519 keys and signatures, the manifest of a run's files, checks.

``content_sha256`` (an unkeyed checksum) catches accidental edits only: anyone can recompute it. The manifest
lists the SHA-256 of every file written with the report (model.pt, the renderings), and the signature, made
with a private key, covers the whole report (manifest included), so an edit cannot be re-sealed without it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.errors import AuditError
from audit.report import canonical_json, content_digest, read_report

SIGN_KEY_ENV = "AUDIT_SIGN_KEY"
PRIVATE_KEY_NAME = "audit-signing-key.pem"
PUBLIC_KEY_NAME = "audit-signing-key.pub.pem"
ALGORITHM = "ed25519"
CHECKSUM_ONLY = "detects accidental changes, not forgery; sign reports with --sign-key"
MAX_KEY_BYTES = 64 * 1024


def add_sign_key_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--sign-key FILE`` to a command that writes a report (unset: $AUDIT_SIGN_KEY; neither: unsigned)."""
    parser.add_argument(
        "--sign-key",
        metavar="FILE",
        help=f"sign the report with this Ed25519 private key (PEM, from 'audit keygen') [${SIGN_KEY_ENV}]",
    )


def resolve_sign_key(value: str | None) -> Ed25519PrivateKey | None:
    """The signing key named by ``--sign-key`` or else $AUDIT_SIGN_KEY, loaded; None when neither is set."""
    if value:
        return load_private_key(value)
    from_env = os.environ.get(SIGN_KEY_ENV)
    return load_private_key(from_env, source=f" (from ${SIGN_KEY_ENV})") if from_env else None


def _read_key_file(path: str | Path, what: str) -> bytes:
    file = Path(path)
    if not file.exists():
        raise AuditError(f"{what} {path} does not exist")
    if not file.is_file():
        raise AuditError(f"{what} {path} is not a regular file; expected a PEM key file")
    try:
        with file.open("rb") as handle:
            return handle.read(MAX_KEY_BYTES)
    except OSError as exc:
        raise AuditError(f"{what} {path} cannot be read ({exc.strerror})") from None


def load_private_key(path: str | Path, source: str = "") -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key from a PEM file, as ``audit keygen`` writes; one line when unusable."""
    what = f"signing key{source}"
    pem = _read_key_file(path, what)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise AuditError(f"{what} {path} is encrypted; expected an unencrypted PEM key (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise AuditError(
            f"{what} {path} is not a PEM private key; expected {PRIVATE_KEY_NAME} from 'audit keygen'"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(
            f"{what} {path} is not an Ed25519 key; expected {PRIVATE_KEY_NAME} from 'audit keygen'"
        )
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (``audit-signing-key.pub.pem``); one line when unusable."""
    pem = _read_key_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise AuditError(
            f"public key {path} is not a PEM public key; expected {PUBLIC_KEY_NAME} from 'audit keygen'"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(
            f"public key {path} is not an Ed25519 key; expected {PUBLIC_KEY_NAME} from 'audit keygen'"
        )
    return key


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A key's short name: the first 16 hex digits of the SHA-256 of its raw public bytes."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]


def generate_keys(out_dir: str | Path) -> tuple[Path, Path, str]:
    """Write a new key pair into ``out_dir`` (private mode 0600); never overwrite. Return both paths and the key id."""
    folder = Path(out_dir)
    private, public = folder / PRIVATE_KEY_NAME, folder / PUBLIC_KEY_NAME
    for path in (private, public):
        if path.exists() or path.is_symlink():
            raise AuditError(f"{path} already exists; keygen never overwrites a key (choose another --out)")
    if folder.exists() and not folder.is_dir():
        raise AuditError(f"--out {folder} is a file; expected a folder for the key pair")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_exclusive(private, pem, 0o600)
        try:
            _write_exclusive(public, pub, 0o666)  # the umask applies: 0644 under the usual 022
        except BaseException:
            private.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise AuditError(f"cannot write the key pair into {folder} ({exc.strerror})") from None
    return private, public, key_id(key.public_key())


def _write_exclusive(path: Path, content: bytes, mode: int) -> None:
    """Create ``path`` (never replacing a file or following a link) with at most ``mode``, and write it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)


def sign_report(data: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``data`` with a ``signature`` block over the canonical JSON of everything else (manifest included)."""
    body = {k: v for k, v in data.items() if k != "signature"}
    public = key.public_key()
    body["signature"] = {
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(raw_public_key(public)).decode(),
        "key_id": key_id(public),
        "value": base64.b64encode(key.sign(canonical_json(body))).decode(),
    }
    return body


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_of(contents: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """The manifest entries of files about to be written: {name: {"sha256": hex, "bytes": size}}, by name."""
    return {
        name: {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
        for name, body in sorted(contents.items())
    }


@dataclass
class Verification:
    """What ``verify_report`` found: problems (none when sound), the manifest files that matched, the signer."""

    problems: list[str] = field(default_factory=list)
    modified: bool = False  # content, a file or the signature changed (else only the signer is in question)
    has_manifest: bool = False
    files: list[str] = field(default_factory=list)
    key_id: str | None = None  # the key of a valid signature

    def fail(self, problem: str, *, modified: bool = True) -> None:
        """Record a problem."""
        self.problems.append(problem)
        self.modified = self.modified or modified


def verify_report(
    path: Path, data: dict[str, Any], *, public_key: Ed25519PublicKey | None = None, strict_files: bool = True
) -> Verification:
    """Check a report's content digest, its manifest's files (beside it) and its signature.

    ``strict_files=False`` (``audit gate``): a report copied without any of its files is checked alone.
    """
    recorded = data.get("content_sha256")
    if not isinstance(recorded, str) or not recorded:
        raise AuditError(f"report {path} has no content_sha256; expected a report.json from 'audit train'")
    found = Verification()
    actual = content_digest(data)
    if actual != recorded:
        found.fail(
            f"its content does not match its content_sha256 (recorded {recorded[:16]}…, now {actual[:16]}…)"
        )
    _check_manifest(found, path.parent, data.get("manifest"), strict_files)
    _check_signature(found, data, public_key)
    return found


def _check_manifest(found: Verification, folder: Path, manifest: Any, strict: bool) -> None:
    if manifest is None:
        return
    found.has_manifest = True
    if not isinstance(manifest, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) for e in manifest.values()
    ):
        found.fail("its manifest is malformed")
        return
    if not strict and not any((folder / n).exists() for n in manifest if _plain_name(n)):
        return  # the report was copied on its own: its digest and signature still hold
    for name, entry in manifest.items():
        if not _plain_name(name):
            found.fail(f"its manifest names {name!r}, which is not a file name")
        elif not (folder / name).is_file():
            found.fail(f"{name} is missing")
        else:
            now = file_sha256(folder / name)
            if now != entry["sha256"]:
                found.fail(
                    f"{name} changed since the report was written (sha256 {entry['sha256'][:16]}…, now {now[:16]}…)"
                )
            else:
                found.files.append(name)


def _plain_name(name: str) -> bool:
    return (
        bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
    )


def _check_signature(found: Verification, data: dict[str, Any], expected: Ed25519PublicKey | None) -> None:
    block = data.get("signature")
    if block is None:
        if expected is not None:
            found.fail("it is not signed, and --public-key asks for a signature", modified=False)
        return
    try:
        if not isinstance(block, dict) or block.get("algorithm") != ALGORITHM:
            raise ValueError
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(block["public_key"], validate=True))
        signature = base64.b64decode(block["value"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        found.fail(
            f"its signature block is malformed (expected algorithm {ALGORITHM!r}, base64 key and value)"
        )
        return
    body = {k: v for k, v in data.items() if k != "signature"}
    try:
        public.verify(signature, canonical_json(body))
    except InvalidSignature:
        found.fail(f"its signature (key {key_id(public)}) does not match its content: edited after signing")
        return
    found.key_id = key_id(public)
    if expected is not None and raw_public_key(expected) != raw_public_key(public):
        found.fail(
            f"it is signed by key {found.key_id}, not by the given public key {key_id(expected)}",
            modified=False,
        )


def check_model_file(model_path: str | Path) -> str:
    """Check a model file against the ``run.model_sha256`` of a report.json beside it; return a note for the report.

    A mismatch (or an unreadable report beside it) is bad input: the file is not the model that report audited.
    """
    model = Path(model_path)
    beside = model.parent / "report.json"
    if not beside.exists():
        return "no report.json beside the model file: not checked"
    try:
        run = read_report(str(beside)).get("run")
    except AuditError as exc:
        raise AuditError(f"model {model_path}: cannot check it against the report beside it: {exc}") from None
    recorded = run.get("model_sha256") if isinstance(run, dict) else None
    if not recorded:
        return "the report.json beside the model file records no model_sha256: not checked"
    actual = file_sha256(model)
    if actual != recorded:
        raise AuditError(
            f"model {model_path} is not the model {beside} audited (model_sha256 {recorded[:16]}…, "
            f"file {actual[:16]}…); it changed since that run"
        )
    return "matches report.json beside it"
