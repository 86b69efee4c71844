"""Content-addressed evidence store and the feature catalog (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from engine.db import EvidenceBlob, Feature
from engine.errors import InvalidPolicy, NotFound
from engine.evidence import EvidenceCorrupted, EvidenceStore, guess_media_type, record_blob
from engine.features import list_features, resolve_features, seed_features, upsert_feature

# ------------------------------------------------------------------ evidence store


def test_put_get_round_trip_and_layout(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "evidence")
    data = b'{"auc": 0.81}'
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.path(sha) == tmp_path / "evidence" / sha[:2] / sha[2:4] / sha
    assert store.exists(sha) and store.get(sha) == data
    assert [p.name for p in store.path(sha).parent.iterdir()] == [sha]  # no temp files left behind


def test_put_is_idempotent(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)
    first = store.put(b"model card")
    mtime = store.path(first).stat().st_mtime_ns
    assert store.put(b"model card") == first
    assert store.path(first).stat().st_mtime_ns == mtime  # not rewritten
    assert store.put(b"") == hashlib.sha256(b"").hexdigest() and store.get(hashlib.sha256(b"").hexdigest()) == b""


def test_concurrent_puts_of_the_same_content(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)
    data = os.urandom(256 * 1024)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(store.put(data))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and store.get(results[0]) == data
    assert [p.name for p in store.path(results[0]).parent.iterdir()] == [results[0]]


def test_missing_and_malformed_digests_are_not_found(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)
    with pytest.raises(NotFound) as missing:
        store.get("0" * 64)
    assert missing.value.code == "not_found"
    for bad in ("../../etc/passwd", "ABC", "g" * 64, "A" * 64):
        assert not store.exists(bad)
        with pytest.raises(NotFound):
            store.get(bad)
        with pytest.raises(ValueError):
            store.path(bad)


def test_corruption_is_detected_on_read(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)
    sha = store.put(b'{"auc": 0.81}')
    path = store.path(sha)
    path.chmod(0o644)
    path.write_bytes(b'{"auc": 0.99}')  # same size, different content
    with pytest.raises(EvidenceCorrupted) as exc:
        store.get(sha)
    assert exc.value.code == "evidence_corrupted" and str(path) in exc.value.message
    # Putting the genuine content again does not hide the damage if the size matches...
    store.put(b'{"auc": 0.81}')
    with pytest.raises(EvidenceCorrupted):
        store.get(sha)
    # ...but a truncated copy is repaired by the next put of the real bytes.
    path.write_bytes(b"{")
    store.put(b'{"auc": 0.81}')
    assert store.get(sha) == b'{"auc": 0.81}'


@pytest.mark.parametrize(
    ("filename", "data", "expected"),
    [
        ("metrics.json", b"{}", "application/json"),
        ("model_card.md", b"# Card", "text/markdown"),
        ("policy.YAML", b"a: 1", "application/yaml"),
        ("scores.csv", b"a,b\n1,2", "text/csv"),
        ("report.pdf", b"%PDF-1.7", "application/pdf"),
        (None, b"%PDF-1.4 ...", "application/pdf"),
        (None, b"\x89PNG\r\n\x1a\n....", "image/png"),
        (None, b' {"auc": 0.8}', "application/json"),
        (None, b"[1, 2", "text/plain"),
        (None, "plain text ✓".encode(), "text/plain"),
        (None, b"\xff\xfe\x00\x01binary", "application/octet-stream"),
        ("blob.unknownext", b"\x00\x01", "application/octet-stream"),
    ],
)
def test_guess_media_type(filename: str | None, data: bytes, expected: str) -> None:
    assert guess_media_type(filename, data) == expected


async def test_record_blob_is_idempotent(sm: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    sha = EvidenceStore(tmp_path).put(b"{}")
    for _ in range(2):
        async with sm() as s, s.begin():
            await record_blob(s, sha256=sha, size=2, media_type="application/json")
    async with sm() as s:
        assert await s.scalar(select(func.count()).select_from(EvidenceBlob)) == 1
        blob = await s.get(EvidenceBlob, sha)
        assert blob is not None and (blob.size, blob.media_type) == (2, "application/json")


# ------------------------------------------------------------------ feature catalog

SEED = """\
features:
  - name: bureau_score
    description: Credit bureau score
    tags: [credit_history]
  - name: applicant_age
    description: Age of the applicant
    tags: [protected_attribute, pii]
  - name: utilization_ratio
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "features.yaml"
    path.write_text(text)
    return path


async def test_seed_inserts_missing_and_never_overwrites(sm: async_sessionmaker[AsyncSession],
                                                         tmp_path: Path) -> None:
    path = _write(tmp_path, SEED)
    async with sm() as s, s.begin():
        assert await seed_features(s, path) == 3
    async with sm() as s, s.begin():
        await upsert_feature(s, name="bureau_score", description="Edited by an admin", tags=["credit_history",
                             "reviewed"], updated_by="admin-1")
    # A later seed (e.g. the next start) with a changed file adds the new entry only.
    _write(tmp_path, SEED.replace("Credit bureau score", "Seed text") + "  - name: months_since_delinquency\n")
    async with sm() as s, s.begin():
        assert await seed_features(s, path) == 1
    async with sm() as s, s.begin():
        assert await seed_features(s, path) == 0
    async with sm() as s:
        features = {f.name: f for f in await list_features(s)}
    assert sorted(features) == ["applicant_age", "bureau_score", "months_since_delinquency", "utilization_ratio"]
    assert features["bureau_score"].description == "Edited by an admin"
    assert features["bureau_score"].tags == ["credit_history", "reviewed"]
    assert features["bureau_score"].updated_by == "admin-1"
    assert features["applicant_age"].tags == ["pii", "protected_attribute"]
    assert features["utilization_ratio"].description == "" and features["utilization_ratio"].tags == []


async def test_seed_refuses_a_malformed_file_with_its_line(sm: async_sessionmaker[AsyncSession],
                                                          tmp_path: Path) -> None:
    path = _write(tmp_path, "features:\n  - name: a\n    colour: red\n")
    async with sm() as s:
        with pytest.raises(InvalidPolicy) as exc:
            await seed_features(s, path)
        assert "features.yaml:3" in str(exc.value) and "colour" in str(exc.value)
        assert await s.scalar(select(func.count()).select_from(Feature)) == 0


async def test_resolve_keeps_order_and_reports_unknown(sm: async_sessionmaker[AsyncSession],
                                                       tmp_path: Path) -> None:
    async with sm() as s, s.begin():
        await seed_features(s, _write(tmp_path, SEED))
    async with sm() as s:
        resolved = await resolve_features(s, ["utilization_ratio", "zip_code", "applicant_age", "bureau_score"])
        assert await resolve_features(s, []) == []
    assert [(f.name, f.known) for f in resolved] == [
        ("utilization_ratio", True), ("zip_code", False), ("applicant_age", True), ("bureau_score", True),
    ]
    assert resolved[2].tags == ["pii", "protected_attribute"] and resolved[2].description == "Age of the applicant"
    assert resolved[1].tags == [] and resolved[1].description == ""


async def test_upsert_creates_then_updates(sm: async_sessionmaker[AsyncSession]) -> None:
    async with sm() as s, s.begin():
        created = await upsert_feature(s, name="income", description="Declared income", tags=["pii", "pii"],
                                       updated_by="admin-1")
    assert created.tags == ["pii"] and created.updated_by == "admin-1"
    async with sm() as s, s.begin():
        updated = await upsert_feature(s, name="income", description="Verified income", tags=[], updated_by="admin-2")
    assert updated.description == "Verified income" and updated.tags == [] and updated.updated_by == "admin-2"
    assert updated.updated_at >= created.updated_at
    async with sm() as s:
        assert [f.name for f in await list_features(s)] == ["income"]
