"""Reading a model repository: its progression.yaml and the evidence files it names.

Used by `make run` (to submit the examples), the CLI and the SDK, so every
client uploads a repository the same way: a `spec` part and one
`evidence.<name>` part per evidence file.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.wire import REQUEST_MAX_BYTES, SPEC_MAX_BYTES

SPEC_FILENAME = "progression.yaml"


def _refuse_too_large(path: Path, size: int, limit: int, what: str) -> None:
    """Checked on the file's size, before reading it: a 10 MB spec is refused at once, naming the file."""
    if size > limit:
        raise OSError(errno.EFBIG, f"{size} bytes; {what} is at most {limit} bytes (the server refuses larger "
                                   "requests)", str(path))


@dataclass
class RepositoryUpload:
    root: Path
    spec_yaml: bytes
    evidence: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # name -> (relative path, content)
    missing: dict[str, str] = field(default_factory=dict)  # name -> relative path that does not exist

    def multipart_files(self) -> list[tuple[str, tuple[str, bytes, str]]]:
        files = [("spec", (SPEC_FILENAME, self.spec_yaml, "application/yaml"))]
        for name, (relpath, content) in sorted(self.evidence.items()):
            files.append((f"evidence.{name}", (relpath, content, "application/octet-stream")))
        return files


def read_repository(root: Path) -> RepositoryUpload:
    """Read ``root/progression.yaml`` and the evidence files it names (paths stay inside ``root``).

    The spec is validated by the server; here we only need the evidence map, so a
    spec that does not parse is uploaded as is and the server answers with the line.
    """
    root = root.resolve()
    spec_path = root / SPEC_FILENAME
    _refuse_too_large(spec_path, spec_path.stat().st_size, SPEC_MAX_BYTES, "a progression.yaml")
    spec_yaml = spec_path.read_bytes()
    upload = RepositoryUpload(root=root, spec_yaml=spec_yaml)
    try:
        data = yaml.safe_load(spec_yaml)
    except yaml.YAMLError:
        return upload
    evidence = data.get("evidence") if isinstance(data, dict) else None
    if not isinstance(evidence, dict):
        return upload
    total = len(spec_yaml)
    for name, relpath in evidence.items():
        if not isinstance(name, str) or not isinstance(relpath, str):
            continue
        path = (root / relpath).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            upload.missing[name] = relpath
            continue
        total += path.stat().st_size
        _refuse_too_large(path, total, REQUEST_MAX_BYTES, "a request with the spec and all evidence")
        upload.evidence[name] = (relpath, path.read_bytes())
    return upload
