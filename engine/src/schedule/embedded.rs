//! The schedule on the embedded store: a redb table keyed by `(due_ms,
//! delivery_id)` (the sorted set) plus `delivery_id → due_ms` to find an entry
//! again. The value marks leased entries, so that a restart (the process owns
//! the database file exclusively) can make every lease of the previous run due
//! at once instead of waiting for it to run out.

use super::Schedule;
use crate::ids::{DeliveryId, TenantId};
use crate::model::Delivery;
use crate::store::StoreError;
use crate::store::embedded::{EmbeddedStore, Hot, SCHEDULE};
use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable};

/// Puts a delivery in the schedule at `due_ms`, moving it if it was there.
pub(crate) fn schedule_at(
    hot: &mut Hot<'_>,
    id: &str,
    due_ms: u64,
    leased: bool,
) -> Result<(), redb::Error> {
    unschedule(hot, id)?;
    hot.schedule.insert((due_ms, id), leased)?;
    hot.schedule_due.insert(id, due_ms)?;
    Ok(())
}

/// Takes a delivery out of the schedule, if it is there.
pub(crate) fn unschedule(hot: &mut Hot<'_>, id: &str) -> Result<(), redb::Error> {
    let old = hot.schedule_due.remove(id)?.map(|g| g.value());
    if let Some(old) = old {
        hot.schedule.remove((old, id))?;
    }
    Ok(())
}

/// Makes every lease left by a previous run due now.
pub(crate) fn release_leases(hot: &mut Hot<'_>, now_ms: u64) -> Result<usize, redb::Error> {
    let leased: Vec<String> = {
        let mut ids = Vec::new();
        for item in hot.schedule.iter()? {
            let (key, leased) = item?;
            if leased.value() {
                ids.push(key.value().1.to_owned());
            }
        }
        ids
    };
    for id in &leased {
        schedule_at(hot, id, now_ms, false)?;
    }
    Ok(leased.len())
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
            let due: Vec<String> = {
                let mut ids = Vec::new();
                for item in hot.schedule.range((0u64, "")..=(now_ms, "\u{7f}"))? {
                    if ids.len() >= limit {
                        break;
                    }
                    ids.push(item?.0.value().1.to_owned());
                }
                ids
            };
            let mut claimed = Vec::with_capacity(due.len());
            for id in due {
                schedule_at(hot, &id, now_ms + lease_ms, true)?;
                if let Some(d) = hot.deliveries.get(id.as_str())? {
                    let d: Delivery = serde_json::from_slice(d.value())?;
                    claimed.push((d.tenant, d.id));
                }
            }
            Ok(claimed)
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
