//! The schedule table of the embedded store, as the writer keeps it in its
//! transactions (claims are [`crate::schedule::embedded`]): a redb table keyed by `(due_ms,
//! delivery_id)` (the sorted set). A pending delivery's record says where
//! its entry is: `next_attempt_at_ms` is always its key (or, for a fresh
//! delivery, its event lease's key, below), so no second index is needed to
//! find an entry again; a claim therefore moves both (a claimed delivery
//! shows the end of its lease as its next attempt, like a fresh one handed
//! straight to the worker). The value marks leased entries, so that a
//! restart (the process owns the database file exclusively) can make every
//! lease of the previous run due at once instead of waiting for it to run out.
//!
//! **Event leases.** A trigger hands its fresh deliveries to this process
//! leased, and writes one entry for all of them, under the key
//! `evt/{tenant}/{event id}` at the lease's end, instead of one per
//! delivery. A delivery is *covered* by that entry while its record is
//! pending with the entry's time as its next attempt; it leaves when its
//! first attempt is recorded (or it is retried by hand). The writer thread
//! remembers, in memory, which of an event's deliveries have not left yet,
//! and removes the entry when the last one leaves, so a normal run never
//! reads it again. When an event lease comes due anyway (a restart, a full
//! delivery queue, an attempt that outlived its lease, or that memory lost
//! with a failed commit), claiming it leases each delivery it still covers
//! on its own, exactly as if each had had its own entry; one that left is
//! skipped. That memory may be lost at any time without losing a delivery:
//! it only saves reads (that late one, and, when a covered delivery's first
//! attempt is recorded, reading back its record, which the writer knows is
//! as the trigger wrote it). What may happen twice: an attempt, as with any
//! lease that runs out.

use super::{EmbeddedStore, Hot, SCHEDULE, listed_deliveries};
use crate::ids::{DeliveryId, TenantId};
use crate::model::{Delivery, DeliveryStatus};
use crate::store::StoreError;
use redb::ReadableTable;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// The schedule entry `d` stands for, if any.
pub(crate) fn slot(d: &Delivery) -> Option<u64> {
    match (d.status, d.next_attempt_at_ms) {
        (DeliveryStatus::Pending, Some(due)) => Some(due),
        _ => None,
    }
}

/// Moves a delivery's entry from where its old record put it (`from`) to
/// where its new one does (`to`), not leased.
fn reschedule(
    hot: &mut Hot<'_>,
    id: &str,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<(), redb::Error> {
    if from == to {
        return Ok(());
    }
    if let Some(old) = from {
        hot.schedule.remove((old, id))?;
    }
    if let Some(due) = to {
        hot.schedule.insert((due, id), false)?;
    }
    Ok(())
}

const EVENT_LEASE: &str = "evt/";

/// The key of the entry leasing all of a fresh event's deliveries.
fn event_lease_key(tenant: &str, event_id: &str) -> String {
    format!("{EVENT_LEASE}{tenant}/{event_id}")
}

/// Tenant and event id of an event lease's key (ids never hold a `/`).
fn event_of(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(EVENT_LEASE)?.split_once('/')
}

/// What the writer remembers of one event lease: its time, and the
/// deliveries it still covers that have not left it yet.
type Covered = (u64, HashSet<String>);

thread_local! {
    /// Per tenant, per event id: its lease, if it still covers deliveries.
    /// Looked up by reference, so that recording an attempt formats no key.
    /// Only the store's writer thread uses it.
    static COVERED: RefCell<HashMap<String, HashMap<String, Covered>>> = RefCell::default();
}

/// Writes the lease entry for an event's fresh deliveries, `members`.
pub(crate) fn lease_event<'a>(
    hot: &mut Hot<'_>,
    tenant: &str,
    event_id: &str,
    due: u64,
    members: impl Iterator<Item = &'a str>,
) -> Result<(), redb::Error> {
    hot.schedule
        .insert((due, event_lease_key(tenant, event_id).as_str()), true)?;
    let members = members.map(str::to_owned).collect();
    COVERED.with(|c| {
        c.borrow_mut()
            .entry(tenant.to_owned())
            .or_default()
            .insert(event_id.to_owned(), (due, members))
    });
    Ok(())
}

/// Forgets what the writer remembers of one event lease (it was claimed).
fn forget_event_lease(tenant: &str, event_id: &str) {
    COVERED.with(|c| {
        if let Some(events) = c.borrow_mut().get_mut(tenant) {
            events.remove(event_id);
        }
    });
}

/// Forgets what the writer remembers of event leases (after a failed
/// commit): those leases are read again when they come due.
pub(crate) fn forget_event_leases() {
    COVERED.with(|c| c.borrow_mut().clear());
}

/// The schedule slot of `d`'s stored record, if the writer knows it without
/// reading: a delivery still covered by its event's lease is stored pending
/// at the lease's time (as the trigger wrote it, or as a retry that fell on
/// that same millisecond left it), which is all an attempt's result needs.
pub(crate) fn known_fresh_slot(d: &Delivery) -> Option<u64> {
    COVERED.with(|c| {
        let covered = c.borrow();
        let (due, members) = covered.get(d.tenant.as_str())?.get(d.event_id.as_str())?;
        members.contains(d.id.as_str()).then_some(*due)
    })
}

/// Moves a delivery in the schedule from `from`, the slot of its stored
/// record, to where its new record `next` puts it: its own entry, and, when
/// it leaves the event lease that covered it, that lease (removed when its
/// last delivery leaves). A covered delivery has no entry of its own to
/// remove, so the usual case (a fresh delivery's first attempt) only
/// touches the writer's memory, and the lease's entry once per event.
pub(crate) fn moved(
    hot: &mut Hot<'_>,
    from: Option<u64>,
    next: &Delivery,
) -> Result<(), redb::Error> {
    let to = slot(next);
    let Some(due) = from.filter(|&due| to != Some(due)) else {
        return reschedule(hot, next.id.as_str(), from, to);
    };
    let (tenant, event_id) = (next.tenant.as_str(), next.event_id.as_str());
    // Whether `next` was covered by its event's lease at `due`, and if so,
    // whether it was the last one.
    let left = COVERED.with(|c| {
        let mut covered = c.borrow_mut();
        let events = covered.get_mut(tenant)?;
        let (at, members) = events.get_mut(event_id)?;
        // Each delivery leaves once, even if a later retry lands on `due`.
        if *at != due || !members.remove(next.id.as_str()) {
            return None;
        }
        let last = members.is_empty();
        if last {
            events.remove(event_id);
        }
        Some(last)
    });
    match left {
        None => reschedule(hot, next.id.as_str(), from, to)?,
        Some(last) => {
            reschedule(hot, next.id.as_str(), None, to)?;
            if last {
                hot.schedule
                    .remove((due, event_lease_key(tenant, event_id).as_str()))?;
            }
        }
    }
    Ok(())
}

/// Leases the entries at `keys` until `until_ms`, updating each record;
/// answers the deliveries leased (an entry without a record is dropped). An
/// event lease's entry leases each delivery it still covers.
pub(crate) fn lease(
    hot: &mut Hot<'_>,
    keys: Vec<(u64, String)>,
    until_ms: u64,
    leased: bool,
) -> Result<Vec<Delivery>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    for (due, id) in keys {
        hot.schedule.remove((due, id.as_str()))?;
        let Some((tenant, event_id)) = event_of(&id) else {
            out.extend(lease_one(hot, &id, None, until_ms, leased)?);
            continue;
        };
        forget_event_lease(tenant, event_id);
        for member in listed_deliveries(&hot.idempotency, tenant, event_id)? {
            out.extend(lease_one(
                hot,
                member.as_str(),
                Some(due),
                until_ms,
                leased,
            )?);
        }
    }
    Ok(out)
}

/// Leases one delivery (if `covered_at` is given, only if an event lease at
/// that time still covers it).
fn lease_one(
    hot: &mut Hot<'_>,
    id: &str,
    covered_at: Option<u64>,
    until_ms: u64,
    leased: bool,
) -> Result<Option<Delivery>, StoreError> {
    let found = hot.deliveries.get(id)?.map(|v| v.value().to_vec());
    let Some(bytes) = found else { return Ok(None) };
    let mut d: Delivery = crate::store::record::decode(&bytes)?;
    if let Some(due) = covered_at {
        if slot(&d) != Some(due) {
            return Ok(None);
        }
        // Its own entry, if a retry happened to fall on the same millisecond.
        hot.schedule.remove((due, id))?;
    }
    d.next_attempt_at_ms = Some(until_ms);
    hot.schedule.insert((until_ms, id), leased)?;
    hot.deliveries
        .insert(id, crate::store::record::compact(&d).as_slice())?;
    Ok(Some(d))
}

/// Makes every lease left by a previous run due now.
pub(crate) fn release_leases(hot: &mut Hot<'_>, now_ms: u64) -> Result<usize, StoreError> {
    let leased: Vec<(u64, String)> = {
        let mut keys = Vec::new();
        for item in hot.schedule.iter()? {
            let (key, leased) = item?;
            if leased.value() {
                let (due, id) = key.value();
                keys.push((due, id.to_owned()));
            }
        }
        keys
    };
    Ok(lease(hot, leased, now_ms, false)?.len())
}

impl EmbeddedStore {
    /// Leases up to `limit` entries due at `now_ms` until `lease_end_ms`
    /// (see [`crate::schedule::Schedule::claim_due`]).
    pub(crate) async fn claim(
        &self,
        now_ms: u64,
        limit: usize,
        lease_end_ms: u64,
    ) -> Result<Vec<(TenantId, DeliveryId)>, StoreError> {
        self.write_hot(move |hot| {
            let due: Vec<(u64, String)> = {
                let mut keys = Vec::new();
                for item in hot.schedule.range((0u64, "")..=(now_ms, "\u{7f}"))? {
                    if keys.len() >= limit {
                        break;
                    }
                    let (key, _) = item?;
                    let (due, id) = key.value();
                    keys.push((due, id.to_owned()));
                }
                keys
            };
            let leased = lease(hot, due, lease_end_ms, true)?;
            Ok(leased.into_iter().map(|d| (d.tenant, d.id)).collect())
        })
        .await
    }

    /// When the earliest entry comes due, if there is one.
    pub(crate) fn next_due(&self) -> Result<Option<u64>, StoreError> {
        use redb::ReadableDatabase;
        let txn = self.db().begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(SCHEDULE).map_err(redb::Error::from)?;
        let first = table.first().map_err(redb::Error::from)?;
        Ok(first.map(|(k, _)| k.value().0))
    }

    /// The schedule table counted at `now_ms` (one read transaction; the
    /// due entries are walked, the rest is the table's length).
    pub(crate) fn schedule_census(
        &self,
        now_ms: u64,
    ) -> Result<crate::schedule::Census, StoreError> {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = self.db().begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(SCHEDULE).map_err(redb::Error::from)?;
        let total = table.len().map_err(redb::Error::from)?;
        let oldest_due_ms = table
            .first()
            .map_err(redb::Error::from)?
            .map(|(k, _)| k.value().0)
            .filter(|&due| due <= now_ms);
        let due = match oldest_due_ms {
            Some(_) => table
                .range((0u64, "")..=(now_ms, "\u{7f}"))
                .map_err(redb::Error::from)?
                .count() as u64,
            None => 0,
        };
        let paused = table
            .range((crate::delivery::pause::PAUSED_DUE_MS, "")..)
            .map_err(redb::Error::from)?
            .count() as u64;
        Ok(crate::schedule::Census {
            due,
            later: total - due - paused,
            paused,
            oldest_due_ms,
        })
    }
}
