//! Writing a planned trigger: the event, its idempotency records, its
//! deliveries and their one schedule entry (see [`Trigger`]).

use super::*;
use crate::store::plan::Plan;

/// The key of the idempotency record every event has, under its id; it also
/// lists the event's deliveries.
pub(super) fn id_key(event_id: &str) -> String {
    format!("id:{event_id}")
}

/// A trigger as the writer needs it: its plan (see [`crate::store::plan`],
/// made on the caller's side with the tenant's webhooks at `version`) and
/// its records encoded, so the one writer only checks and inserts. The
/// writer writes it only if that is still the tenant's version; otherwise
/// it hands it back to be planned again. The writer never fans out.
pub(crate) struct Trigger {
    plan: Plan,
    event_bytes: Vec<u8>,
    /// `plan.deliveries[i]` encoded.
    delivery_bytes: Vec<Vec<u8>>,
    version: i64,
}

impl Trigger {
    pub(super) fn new(plan: Plan, version: i64) -> Trigger {
        Trigger {
            event_bytes: enc(&plan.event),
            delivery_bytes: plan.deliveries.iter().map(compact).collect(),
            plan,
            version,
        }
    }

    /// The trigger as it came, to be planned again.
    pub(super) fn into_new(self) -> NewEvent {
        self.plan.into_new()
    }

    /// True while the tenant's webhooks are the ones it was planned with.
    pub(super) fn current(&self, cache: &WebhookCache) -> bool {
        cache.version(&self.plan.event.tenant).0 == self.version
    }
}

/// Writes a planned trigger (whose version the writer checked).
pub(super) fn ingest(hot: &mut Hot<'_>, t: Trigger) -> Result<Ingested, StoreError> {
    let Trigger {
        plan,
        event_bytes,
        delivery_bytes,
        ..
    } = t;
    let event = &plan.event;
    let tenant = event.tenant.as_str();
    let id_key = id_key(event.id.as_str());
    let header_key = plan.idempotency_key.as_ref().map(|k| format!("key:{k}"));
    for key in header_key.iter().chain(std::iter::once(&id_key)) {
        if let Some(prev) =
            get_json::<_, IdempotentAnswer>(&hot.idempotency, (tenant, key.as_str()))?
        {
            return Ok(plan.after(prev));
        }
    }

    hot.events
        .insert((tenant, event.id.as_str()), event_bytes.as_slice())
        .map_err(redb::Error::from)?;
    hot.event_times
        .insert((tenant, event.occurred_at_ms, event.id.as_str()), ())
        .map_err(redb::Error::from)?;
    let mut answer = plan.answer();
    if let Some(key) = &header_key {
        hot.idempotency
            .insert((tenant, key.as_str()), enc(&answer).as_slice())
            .map_err(redb::Error::from)?;
    }
    answer.delivery_ids = plan.deliveries.iter().map(|d| d.id.clone()).collect();
    hot.idempotency
        .insert((tenant, id_key.as_str()), enc(&answer).as_slice())
        .map_err(redb::Error::from)?;
    saw_event_type(hot, tenant, event)?;
    for (d, bytes) in plan.deliveries.iter().zip(&delivery_bytes) {
        let (id, hook) = (d.id.as_str(), d.webhook_id.as_str());
        hot.webhook_deliveries
            .insert((hook, id), ())
            .map_err(redb::Error::from)?;
        update_stats(hot, tenant, hook, |s| {
            s.total += 1;
            s.pending += 1;
        })?;
        hot.deliveries
            .insert(id, bytes.as_slice())
            .map_err(redb::Error::from)?;
    }
    if !plan.deliveries.is_empty() {
        // One leased entry for all of them (see `super::schedule`).
        let members = plan.deliveries.iter().map(|d| d.id.as_str());
        lease_event(hot, tenant, event.id.as_str(), plan.due_at_ms, members)?;
    }
    Ok(plan.created())
}

/// The deliveries an event's `id:` record (`idem`) lists: those it created.
pub(crate) fn listed_deliveries(
    idem: &impl ReadableTable<Keyed2, Json>,
    tenant: &str,
    event_id: &str,
) -> Result<Vec<DeliveryId>, StoreError> {
    let answer: Option<IdempotentAnswer> = get_json(idem, (tenant, id_key(event_id).as_str()))?;
    Ok(answer.map(|a| a.delivery_ids).unwrap_or_default())
}
