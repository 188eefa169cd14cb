//! The outbox table's statements.

use crate::store::{BlockedEvent, EventHead, NewEvent, OutboxRow, OutboxStats, MARK_SPAN};
use rusqlite::{params, Connection, OptionalExtension};

pub(crate) fn insert(conn: &Connection, id: i64, e: &NewEvent<'_>) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO outbox (id, order_id, event_type, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, e.order_id.get(), e.event_type, e.payload.with_id(id), e.at])?;
    Ok(())
}

/// Unpublished rows, oldest first: those past the watermark (V12) and `after`.
pub fn pending(conn: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, order_id, event_type, payload, created_at FROM outbox
         WHERE id > MAX(?1, (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks))
         ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map([after, limit as i64], |r| {
        OutboxRow::read(r.get(0)?, r.get(1)?, r.get(2)?, r.get(4)?, r.get(3)?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })
    })?;
    rows.collect()
}

pub fn stats(conn: &Connection) -> rusqlite::Result<OutboxStats> {
    let pending = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM outbox
             WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
        )?
        .query_row([], |r| r.get(0))?;
    // Ids are handed out in commit order: the oldest pending event has the lowest id.
    let oldest_pending_at = conn
        .prepare_cached(
            "SELECT created_at FROM outbox
             WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks) ORDER BY id LIMIT 1",
        )?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(OutboxStats {
        pending,
        oldest_pending_at,
    })
}

/// Published rows still kept: a scan of them, for `outbox status`, never for a probe.
pub fn published_count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM outbox
         WHERE id <= (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
        [],
        |r| r.get(0),
    )
}

/// Moves the watermark to the last of `ids`, the confirmed run from the oldest pending
/// event (V12): one small row, however many events, or the newest row moved on if it was
/// made within `MARK_SPAN`. Returns how many of `ids` it published.
pub(crate) fn mark_published(conn: &Connection, ids: &[i64], at: i64) -> rusqlite::Result<usize> {
    let Some(&last) = ids.last() else {
        return Ok(0);
    };
    let newest: Option<(i64, i64)> = conn
        .prepare_cached("SELECT upto, at FROM outbox_marks ORDER BY upto DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let upto = newest.map_or(0, |(upto, _)| upto);
    if last <= upto {
        return Ok(0);
    }
    match newest {
        Some((upto, made)) if at - made < MARK_SPAN => conn
            .prepare_cached("UPDATE outbox_marks SET upto = ?1 WHERE upto = ?2")?
            .execute(params![last, upto])?,
        _ => conn
            .prepare_cached("INSERT INTO outbox_marks (upto, at) VALUES (?1, ?2)")?
            .execute(params![last, at])?,
    };
    Ok(ids.iter().filter(|&&id| id > upto).count())
}

/// Deletes at most `limit` events published before `before`, oldest first, but never
/// the newest row, so that ids (and event ids) are not handed out twice; then the marks
/// no event is left under, but the watermark.
pub(crate) fn prune(conn: &Connection, before: i64, limit: usize) -> rusqlite::Result<usize> {
    let n = conn
        .prepare_cached(
            "DELETE FROM outbox WHERE id IN (
               SELECT id FROM outbox
               WHERE id <= COALESCE(
                 (SELECT upto FROM outbox_marks WHERE at < ?1 ORDER BY at DESC LIMIT 1), 0)
                 AND id < (SELECT MAX(id) FROM outbox)
               ORDER BY id LIMIT ?2)",
        )?
        .execute(params![before, limit as i64])?;
    conn.prepare_cached(
        "DELETE FROM outbox_marks
         WHERE upto < (SELECT COALESCE(MIN(id), 0) FROM outbox)
           AND upto < (SELECT MAX(upto) FROM outbox_marks)",
    )?
    .execute([])?;
    Ok(n)
}

pub(crate) fn max_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT MAX(id) FROM outbox", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .optional()
    .map(|v| v.flatten().unwrap_or(0))
}

/// The refused event, while it is still pending (publishing it ends the block).
pub fn blocked(conn: &Connection) -> rusqlite::Result<Option<BlockedEvent>> {
    conn.prepare_cached(
        "SELECT id, event_type, payload, blocked_since FROM outbox
         WHERE blocked_since IS NOT NULL
           AND id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)
         ORDER BY id LIMIT 1",
    )?
    .query_row([], |r| {
        let payload: String = r.get(2)?;
        let head = EventHead::of(&payload).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
        })?;
        Ok(BlockedEvent {
            id: r.get(0)?,
            event_id: head.event_id,
            event_type: r.get(1)?,
            since: r.get(3)?,
        })
    })
    .optional()
}

pub(crate) fn mark_blocked(conn: &Connection, id: i64, since: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE outbox SET blocked_since = ?1
         WHERE id = ?2 AND id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
    )?
    .execute(params![since, id])
}
