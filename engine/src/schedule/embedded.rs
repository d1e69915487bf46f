//! The schedule on the embedded store: claims from its schedule table (see
//! `store::embedded::schedule` for the table, its event leases and what the
//! writer keeps in it). A claim is one write: it moves each due entry to
//! the end of its lease and the delivery's record with it.

use super::{Census, Schedule};
use crate::ids::{DeliveryId, TenantId};
use crate::store::{EmbeddedStore, StoreError};
use async_trait::async_trait;

#[async_trait]
impl Schedule for EmbeddedStore {
    async fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> Result<Vec<(TenantId, DeliveryId)>, StoreError> {
        // Skip the write when nothing is due: idle engines stay idle.
        match self.next_due()? {
            Some(due) if due <= now_ms => {}
            _ => return Ok(Vec::new()),
        }
        self.claim(now_ms, limit, now_ms + lease_ms).await
    }

    async fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        self.next_due()
    }

    async fn census(&self, now_ms: u64) -> Result<Census, StoreError> {
        self.schedule_census(now_ms)
    }
}
