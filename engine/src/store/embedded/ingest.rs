//! Writing a planned trigger: the event, its idempotency records, its
//! deliveries and their one schedule entry (see [`Trigger`]).

use super::*;

/// The key of the idempotency record every event has, under its id; it also
/// lists the event's deliveries.
pub(super) fn id_key(event_id: &str) -> String {
    format!("id:{event_id}")
}

/// A trigger as the writer needs it, planned on the caller's side so that
/// the single writer only checks and inserts: the event record encoded, and
/// the fan-out made (off the async workers when filters run, see
/// [`FanOutGate`]) with the tenant's webhooks at `version`. The writer
/// writes it only if that is still the tenant's version; otherwise it hands
/// it back to be planned again. The writer never fans out.
pub(crate) struct Trigger {
    event: Event,
    event_bytes: Vec<u8>,
    idempotency_key: Option<String>,
    fingerprint: String,
    only_webhook: Option<WebhookId>,
    due_at_ms: u64,
    version: i64,
    fanned: FanOut,
}

pub(super) struct FanOut {
    targets: Vec<Arc<Webhook>>,
    filtered: u32,
    /// Each new delivery with its encoded record.
    deliveries: Vec<(Delivery, Vec<u8>)>,
}

impl Trigger {
    pub(super) fn new(
        new: NewEvent,
        version: i64,
        targets: Vec<Arc<Webhook>>,
        filtered: u32,
    ) -> Trigger {
        let event = Event {
            id: new.id,
            tenant: new.tenant,
            event_type: new.event_type,
            data: new.data,
            occurred_at_ms: new.occurred_at_ms,
        };
        let deliveries = targets
            .iter()
            .map(|w| {
                let d = crate::store::new_delivery(&event, w, new.due_at_ms);
                let bytes = compact(&d);
                (d, bytes)
            })
            .collect();
        Trigger {
            event_bytes: enc(&event),
            event,
            idempotency_key: new.idempotency_key,
            fingerprint: new.fingerprint,
            only_webhook: new.only_webhook,
            due_at_ms: new.due_at_ms,
            version,
            fanned: FanOut {
                targets,
                filtered,
                deliveries,
            },
        }
    }

    /// The trigger as it came, to be planned again.
    pub(super) fn into_new(self) -> NewEvent {
        NewEvent {
            id: self.event.id,
            tenant: self.event.tenant,
            event_type: self.event.event_type,
            data: self.event.data,
            occurred_at_ms: self.event.occurred_at_ms,
            idempotency_key: self.idempotency_key,
            fingerprint: self.fingerprint,
            only_webhook: self.only_webhook,
            due_at_ms: self.due_at_ms,
        }
    }

    /// True while the tenant's webhooks are the ones it was planned with.
    pub(super) fn current(&self, cache: &WebhookCache) -> bool {
        cache.version(&self.event.tenant).0 == self.version
    }
}

/// Writes a planned trigger (whose version the writer checked).
pub(super) fn ingest(hot: &mut Hot<'_>, t: Trigger) -> Result<Ingested, StoreError> {
    let Trigger {
        event,
        event_bytes,
        idempotency_key,
        fingerprint,
        due_at_ms,
        fanned,
        ..
    } = t;
    let tenant = event.tenant.as_str();
    let id_key = id_key(event.id.as_str());
    let header_key = idempotency_key.as_ref().map(|k| format!("key:{k}"));
    for key in header_key.iter().chain(std::iter::once(&id_key)) {
        if let Some(prev) =
            get_json::<_, IdempotentAnswer>(&hot.idempotency, (tenant, key.as_str()))?
        {
            return Ok(if prev.fingerprint == fingerprint {
                Ingested::Replayed(prev)
            } else {
                Ingested::KeyReused(prev)
            });
        }
    }

    hot.events
        .insert((tenant, event.id.as_str()), event_bytes.as_slice())
        .map_err(redb::Error::from)?;
    let mut answer = IdempotentAnswer {
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        deliveries: fanned.deliveries.len() as u32,
        fingerprint,
        at_ms: event.occurred_at_ms,
        delivery_ids: Vec::new(),
    };
    if let Some(key) = &header_key {
        hot.idempotency
            .insert((tenant, key.as_str()), enc(&answer).as_slice())
            .map_err(redb::Error::from)?;
    }
    answer.delivery_ids = fanned
        .deliveries
        .iter()
        .map(|(d, _)| d.id.clone())
        .collect();
    hot.idempotency
        .insert((tenant, id_key.as_str()), enc(&answer).as_slice())
        .map_err(redb::Error::from)?;
    saw_event_type(hot, tenant, &event)?;
    for (d, bytes) in &fanned.deliveries {
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
    if !fanned.deliveries.is_empty() {
        // One leased entry for all of them (see `super::schedule`).
        let members = fanned.deliveries.iter().map(|(d, _)| d.id.as_str());
        lease_event(hot, tenant, event.id.as_str(), due_at_ms, members)?;
    }
    Ok(Ingested::Created {
        event,
        deliveries: fanned.deliveries.into_iter().map(|(d, _)| d).collect(),
        webhooks: fanned.targets,
        filtered: fanned.filtered,
    })
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
