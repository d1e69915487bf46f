//! The retry schedule: deliveries ordered by due time (a sorted set), and the
//! timing rules in [`policy`].
//!
//! Deliveries enter and leave the schedule in the same writes that change
//! their status (see [`crate::store`]); this trait is the other half, used by
//! the delivery worker: take what is due, leasing it. A claimed delivery is
//! re-scored to `now + lease`, so if the process dies before recording the
//! outcome the delivery comes due again when the lease runs out. An attempt
//! may therefore be made twice (at-least-once); receivers deduplicate on the
//! delivery id, which every attempt carries.

pub mod embedded;
pub mod policy;
pub mod redis;

use crate::ids::{DeliveryId, TenantId};
use crate::store::StoreError;
use async_trait::async_trait;

#[async_trait]
pub trait Schedule: Send + Sync + 'static {
    /// Takes up to `limit` entries due at or before `now_ms`, earliest first,
    /// leasing each delivery until `now_ms + lease_ms`. An entry is one
    /// delivery, except on the embedded store, where a trigger's fresh
    /// deliveries share one entry: claiming it takes every delivery it still
    /// covers, so the answer may hold more than `limit` deliveries.
    async fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> Result<Vec<(TenantId, DeliveryId)>, StoreError>;

    /// When the earliest scheduled delivery comes due, if any is scheduled.
    async fn next_due_ms(&self) -> Result<Option<u64>, StoreError>;

    /// How many entries are due at `now_ms` and later, and since when the
    /// oldest due one has been (the schedule gauges of `/metrics`).
    async fn census(&self, now_ms: u64) -> Result<Census, StoreError>;
}

/// The schedule counted at one time. An entry is a delivery, except for a
/// trigger's fresh deliveries on the embedded store (one entry for all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub due: u64,
    /// Due later, not counting those waiting for their webhook.
    pub later: u64,
    /// Waiting for their webhook to be enabled (see `delivery::pause`).
    pub paused: u64,
    /// When the oldest entry due now came due.
    pub oldest_due_ms: Option<u64>,
}
