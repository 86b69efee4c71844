"""``Idempotency-Key`` for every POST: a retry gets the first answer back and writes nothing twice.

Per (user, key) the first request reserves a row in ``idempotency_keys`` (status NULL
while in flight), runs, and stores its status and body. Then:
- same key, same request (by a hash over the request's meaning, so a new multipart
  boundary on a retry does not matter) -> the stored answer, nothing runs again;
- same key, different request -> 422 ``idempotency_key_reused``;
- same key while the first is still in flight -> 409 ``idempotency_in_flight``.
Answers with status >= 500 are not stored (the reservation is dropped) so a retry can
succeed; 4xx answers are stored, they are the first answer. A reservation left by a
crashed process is taken over after ``STALE_AFTER``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.authz import Principal
from api.errors import ApiError, error_response
from engine.db import IdempotencyRecord, utcnow
from engine.errors import ProgressionError

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 200
STALE_AFTER = timedelta(minutes=10)
REPLAY_HEADER = "Idempotent-Replayed"
FINISH_RETRY_SECONDS = 60.0  # longer than a database failover

Producer = Callable[[], Awaitable[tuple[int, Any]]]


def fingerprint(*parts: Any) -> str:
    """A stable hash over the meaning of a request (method, path, canonical body / file digests)."""
    canonical = json.dumps(jsonable_encoder(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ApiError(422, "invalid_idempotency_key",
                       f"{HEADER} must be 1-{MAX_KEY_LENGTH} printable characters")
    return key


def decision_id_for(principal: Principal, key: str | None, fallback: str) -> str:
    """The workflow-level dedup id for a decision: derived from (user, key) so a retry reuses it."""
    if key is None:
        return fallback
    return "idem-" + hashlib.sha256(f"{principal.id}\x00{key}".encode()).hexdigest()[:40]


async def _reserve(sm: async_sessionmaker[AsyncSession], principal: Principal, key: str, request: Request,
                   request_hash: str) -> IdempotencyRecord | None:
    """Reserve (user, key); None when reserved now, else the existing record."""
    async with sm() as session:
        session.add(IdempotencyRecord(user_id=principal.id, key=key, method=request.method,
                                      path=request.url.path[:500], request_hash=request_hash,
                                      status_code=None, response_body=None, created_at=utcnow()))
        try:
            await session.commit()
            return None
        except IntegrityError:
            await session.rollback()
        existing = (await session.execute(select(IdempotencyRecord).where(
            IdempotencyRecord.user_id == principal.id, IdempotencyRecord.key == key))).scalar_one_or_none()
        if existing is None:  # deleted between our insert and select (a failed first attempt): try again
            return await _reserve(sm, principal, key, request, request_hash)
        if (existing.status_code is None and existing.request_hash == request_hash
                and utcnow() - existing.created_at > STALE_AFTER):
            # Abandoned by a crashed process: take it over (only one taker wins the conditional update).
            taken = await session.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.id == existing.id, IdempotencyRecord.created_at == existing.created_at,
                       IdempotencyRecord.status_code.is_(None))
                .values(created_at=utcnow()))
            await session.commit()
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return None
        return existing


async def _finish(sm: async_sessionmaker[AsyncSession], principal: Principal, key: str, status: int,
                  body: Any) -> None:
    """Store the answer (or drop the reservation), retrying while the database is unreachable.

    Giving up at once would leave the key "in flight" until ``STALE_AFTER``, so every retry of a
    request that was answered during a short database outage would get 409 for ten minutes.
    """
    delay = 0.2
    deadline = asyncio.get_running_loop().time() + FINISH_RETRY_SECONDS
    while True:
        try:
            await _store(sm, principal, key, status, body)
            return
        except (DBAPIError, OSError):
            if asyncio.get_running_loop().time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _store(sm: async_sessionmaker[AsyncSession], principal: Principal, key: str, status: int,
                 body: Any) -> None:
    async with sm() as session:
        if status >= 500:
            await session.execute(delete(IdempotencyRecord).where(
                IdempotencyRecord.user_id == principal.id, IdempotencyRecord.key == key))
        else:
            await session.execute(update(IdempotencyRecord).where(
                IdempotencyRecord.user_id == principal.id, IdempotencyRecord.key == key).values(
                status_code=status, response_body=json.dumps(jsonable_encoder(body))))
        await session.commit()


async def idempotent(request: Request, principal: Principal, request_hash: str, produce: Producer,
                     sessionmaker: async_sessionmaker[AsyncSession], *, key: str | None = None) -> JSONResponse:
    """Run ``produce`` at most once per (user, Idempotency-Key); without a key it simply runs."""
    key = key if key is not None else idempotency_key(request)
    if key is None:
        status, body = await produce()
        return JSONResponse(jsonable_encoder(body), status_code=status)
    existing = await _reserve(sessionmaker, principal, key, request, request_hash)
    if existing is not None:
        if existing.request_hash != request_hash or existing.method != request.method \
                or existing.path != request.url.path[:500]:
            raise ApiError(422, "idempotency_key_reused",
                           f"{HEADER} {key!r} was already used for a different request; use a new key",
                           {"key": key})
        if existing.status_code is None:
            raise ApiError(409, "idempotency_in_flight",
                           f"a request with {HEADER} {key!r} is still being processed; retry later",
                           {"key": key})
        return JSONResponse(json.loads(existing.response_body or "null"), status_code=existing.status_code,
                            headers={REPLAY_HEADER: "true"})
    try:
        status, body = await produce()
    except ProgressionError as exc:
        await _finish(sessionmaker, principal, key, exc.status, exc.to_dict())
        headers = getattr(exc, "headers", None)
        return error_response(exc.status, exc.code, exc.message, exc.details, headers)
    except BaseException:
        await _finish(sessionmaker, principal, key, 500, None)
        raise
    await _finish(sessionmaker, principal, key, status, body)
    return JSONResponse(jsonable_encoder(body), status_code=status)
