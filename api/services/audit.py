"""Audit queries: filtered keyset pages, streaming exports, chain verification.

Paging is by ``seq`` (keyset): new events only ever get a larger ``seq``, so pages
neither repeat nor skip while events are being appended. The cursor is opaque to
clients (base64 of the last ``seq`` seen). Developers read only events of their
team's models; everyone else with ``read_audit`` reads all.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.authz import Action, Principal, require, visible_team_filter
from api.errors import ApiError
from api.exports import csv_cell
from api.services.people import people, resolve_user
from engine.audit import event_to_dict, filter_conditions, verify_chain
from engine.db import AuditEvent, CatalogModel
from engine.lifecycle import Person
from engine.wire import AuditEventOut, AuditFilter, AuditPage, ChainVerification

CSV_COLUMNS = ["seq", "event_id", "event_type", "occurred_at", "recorded_at", "actor_id", "actor_username",
               "actor_display_name", "progression_id", "model_id", "stage", "payload", "prev_hash", "hash"]
BOM = "\ufeff"  # CSV for spreadsheet tools that guess the encoding (?bom=true)
EXPORT_BATCH = 1000


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "seq" or not value.isdigit():
            raise ValueError
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "invalid_cursor", "cursor is not one this API returned", {"cursor": cursor}) from None


def _conditions(principal: Principal, f: AuditFilter) -> list[ColumnElement[bool]]:
    conds = filter_conditions(f)
    team = visible_team_filter(principal)
    if team is not None:
        conds.append(AuditEvent.model_id.in_(select(CatalogModel.id).where(CatalogModel.team == team)))
    return conds


def _with_names(ev: AuditEvent, names: dict[str, Person]) -> dict[str, Any]:
    d = event_to_dict(ev)
    person = names.get(ev.actor_id or "")
    d["actor_username"] = person.username if person else None
    d["actor_display_name"] = person.display_name if person else None
    return d


async def resolved(session: AsyncSession, filters: AuditFilter) -> AuditFilter:
    """The filter with its actor as a user id (it may be typed as a username); an unknown one is refused."""
    if not filters.actor:
        return filters
    return filters.model_copy(update={"actor": await resolve_user(session, filters.actor, "actor")})


async def list_events(*, session: AsyncSession, principal: Principal, filters: AuditFilter,
                      cursor: str | None, limit: int) -> AuditPage:
    require(principal, Action.read_audit)
    conds = _conditions(principal, await resolved(session, filters))
    if cursor:
        conds.append(AuditEvent.seq > decode_cursor(cursor))
    rows = (await session.execute(select(AuditEvent).where(*conds).order_by(AuditEvent.seq)
                                  .limit(limit + 1))).scalars().all()
    page = rows[:limit]
    # The cursor always points after the last event seen (or stays where it was on an empty page), so
    # a client can keep polling for newer events; has_more says whether more exist right now.
    next_cursor = encode_cursor(page[-1].seq) if page else cursor
    names = await people(session, (e.actor_id for e in page))
    return AuditPage(items=[AuditEventOut.model_validate(_with_names(e, names)) for e in page],
                     next_cursor=next_cursor, has_more=len(rows) > limit, limit=limit)


async def export_events(*, sessionmaker: async_sessionmaker[AsyncSession], principal: Principal,
                        filters: AuditFilter, fmt: str, bom: bool = False) -> AsyncIterator[bytes]:
    """Stream every matching event up to the newest at the start (a consistent snapshot by seq).

    UTF-8 text stays text (no ``\\u`` escapes), in the payload too; each event names its actor by username and
    display name beside the id. ``bom``: a CSV starts with a byte order mark (for spreadsheet tools)."""
    require(principal, Action.export_audit)
    if fmt not in ("csv", "jsonl"):
        raise ApiError(422, "invalid_format", f"format must be csv or jsonl, not {fmt!r}")
    if bom and fmt != "csv":
        raise ApiError(422, "invalid_bom", "bom applies to the CSV format only")
    async with sessionmaker() as session:
        upper = (await session.execute(select(func.max(AuditEvent.seq)))).scalar_one() or 0
        conds = _conditions(principal, await resolved(session, filters))

    async def generate() -> AsyncIterator[bytes]:
        after = 0
        if fmt == "csv":
            buf = io.StringIO()
            if bom:
                buf.write(BOM)
            csv.writer(buf).writerow(CSV_COLUMNS)
            yield buf.getvalue().encode()
        async with sessionmaker() as session:
            while True:
                rows = (await session.execute(select(AuditEvent).where(
                    *conds, AuditEvent.seq > after, AuditEvent.seq <= upper).order_by(AuditEvent.seq)
                    .limit(EXPORT_BATCH))).scalars().all()
                if not rows:
                    return
                buf = io.StringIO()
                writer = csv.writer(buf)
                names = await people(session, (e.actor_id for e in rows))
                for ev in rows:
                    d = _with_names(ev, names)
                    if fmt == "jsonl":
                        buf.write(json.dumps(d, sort_keys=True, separators=(",", ":"), default=str,
                                             ensure_ascii=False) + "\n")
                    else:
                        d["payload"] = json.dumps(d["payload"], sort_keys=True, separators=(",", ":"), default=str,
                                                  ensure_ascii=False)
                        writer.writerow([csv_cell(d[c]) for c in CSV_COLUMNS])
                yield buf.getvalue().encode()
                after = rows[-1].seq
                session.expunge_all()

    return generate()



async def verify(*, session: AsyncSession, principal: Principal) -> ChainVerification:
    require(principal, Action.verify_audit)
    return await verify_chain(session)
