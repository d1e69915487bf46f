//! The schedule on the embedded store: a redb table keyed by `(due_ms,
//! delivery_id)` (the sorted set). A pending delivery's record says where
//! its entry is: `next_attempt_at_ms` is always its key, so no second index
//! is needed to find an entry again; a claim therefore moves both (a claimed
//! delivery shows the end of its lease as its next attempt, like a fresh one
//! handed straight to the worker). The value marks leased entries, so that a
//! restart (the process owns the database file exclusively) can make every
//! lease of the previous run due at once instead of waiting for it to run out.

use super::Schedule;
use crate::ids::{DeliveryId, TenantId};
use crate::model::{Delivery, DeliveryStatus};
use crate::store::StoreError;
use crate::store::embedded::{EmbeddedStore, Hot, SCHEDULE};
use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable};

/// The schedule entry `d` stands for, if any.
pub(crate) fn slot(d: &Delivery) -> Option<u64> {
    match (d.status, d.next_attempt_at_ms) {
        (DeliveryStatus::Pending, Some(due)) => Some(due),
        _ => None,
    }
}

/// Moves a delivery's entry from where its old record put it (`from`) to
/// where its new one does (`to`), not leased.
pub(crate) fn reschedule(
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

/// Leases the entries at `keys` until `until_ms`, updating each record;
/// answers the deliveries leased (an entry without a record is dropped).
fn lease(
    hot: &mut Hot<'_>,
    keys: Vec<(u64, String)>,
    until_ms: u64,
    leased: bool,
) -> Result<Vec<Delivery>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    for (due, id) in keys {
        hot.schedule.remove((due, id.as_str()))?;
        let found = hot.deliveries.get(id.as_str())?.map(|v| v.value().to_vec());
        let Some(bytes) = found else { continue };
        let mut d: Delivery = crate::store::record::decode(&bytes)?;
        d.next_attempt_at_ms = Some(until_ms);
        hot.schedule.insert((until_ms, id.as_str()), leased)?;
        hot.deliveries
            .insert(id.as_str(), crate::store::record::compact(&d).as_slice())?;
        out.push(d);
    }
    Ok(out)
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

#[async_trait]
impl Schedule for EmbeddedStore {
    async fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> Result<Vec<(TenantId, DeliveryId)>, StoreError> {
        // Skip the write when nothing is due: idle engines stay idle.
        match self.next_due_ms().await? {
            Some(due) if due <= now_ms => {}
            _ => return Ok(Vec::new()),
        }
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
            let leased = lease(hot, due, now_ms + lease_ms, true)?;
            Ok(leased.into_iter().map(|d| (d.tenant, d.id)).collect())
        })
        .await
    }

    async fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db().begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(SCHEDULE).map_err(redb::Error::from)?;
        let first = table.first().map_err(redb::Error::from)?;
        Ok(first.map(|(k, _)| k.value().0))
    }
}
