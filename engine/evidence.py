"""Content-addressed evidence: each file is stored once, named by its SHA-256, under the data directory.

Layout: ``<root>/ab/cd/<sha256>`` (two fan-out levels keep directories small). Writes go to a
temporary file in the target directory and are moved into place with ``os.replace``, so a reader
never sees a half-written blob and concurrent writers of the same content both succeed. Reads
re-hash the content, so a file changed on disk is reported, never silently used as evidence.

The store is synchronous file I/O; async callers wrap it in ``asyncio.to_thread`` for large files.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from engine.db import EvidenceBlob, insert_ignore, utcnow
from engine.errors import NotFound, ProgressionError

_SHA256 = re.compile(r"[0-9a-f]{64}")


class EvidenceCorrupted(ProgressionError):
    """A stored blob no longer hashes to its name: it was changed or damaged on disk."""

    code = "evidence_corrupted"
    status = 500


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EvidenceStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        """Where the blob lives. Only a 64-character lowercase hex digest is accepted (no path tricks)."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        try:
            return self.path(sha256).is_file()
        except ValueError:
            return False

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its SHA-256 hex digest. Storing the same bytes again is a no-op."""
        digest = sha256_hex(data)
        target = self.path(digest)
        try:
            if target.stat().st_size == len(data):
                return digest
        except FileNotFoundError:
            pass
        # Missing, or a damaged copy of another size: (re)write it atomically.
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)  # evidence is immutable
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return digest

    def get(self, sha256: str) -> bytes:
        """The blob's bytes; :class:`NotFound` if absent, :class:`EvidenceCorrupted` if it no longer matches."""
        try:
            target = self.path(sha256)
            data = target.read_bytes()
        except (ValueError, FileNotFoundError):
            raise NotFound(f"evidence {sha256} is not in the evidence store", details={"sha256": sha256}) from None
        actual = sha256_hex(data)
        if actual != sha256:
            raise EvidenceCorrupted(
                f"evidence file {target} is corrupted: its content hashes to {actual}, not {sha256}",
                details={"sha256": sha256, "actual_sha256": actual, "path": str(target)},
            )
        return data


async def record_blob(
    session: AsyncSession, *, sha256: str, size: int, media_type: str, created_at: datetime | None = None
) -> None:
    """Insert the blob's metadata row unless it exists (idempotent; inside the caller's transaction)."""
    await session.execute(insert_ignore(
        session, EvidenceBlob, ["sha256"], sha256=sha256, size=size, media_type=media_type,
        created_at=created_at or utcnow()))


_BY_SUFFIX = {
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".parquet": "application/vnd.apache.parquet",
    ".zip": "application/zip",
}

_MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"PK\x03\x04", "application/zip"),
    (b"PAR1", "application/vnd.apache.parquet"),
)


def guess_media_type(filename: str | None, data: bytes) -> str:
    """Media type from the file name's extension, else from the content (magic bytes, JSON, text)."""
    if filename:
        suffix = Path(filename).suffix.lower()
        if suffix in _BY_SUFFIX:
            return _BY_SUFFIX[suffix]
        guessed, _ = mimetypes.guess_type(filename)
        if guessed:
            return guessed
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    if "\x00" in text:
        return "application/octet-stream"
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            json.loads(text)
            return "application/json"
        except ValueError:
            pass
    return "text/plain"
