//! Retention on the embedded store (see [`crate::store::Store::sweep`]).

use super::*;

/// When an engine-minted id (`dlv_<ulid>`) was created.
pub(super) fn id_time_ms(id: &str) -> Option<u64> {
    let (_, ulid) = id.split_once('_')?;
    ulid::Ulid::from_string(&ulid.to_uppercase())
        .ok()
        .map(|u| u.timestamp_ms())
}

/// Retention: see [`Store::sweep`]. Deliveries are found by id (ids sort by
/// time); events and idempotency keys by a scan (run rarely).
pub(super) fn sweep(txn: &WriteTransaction, cutoff_ms: u64) -> Result<u64, StoreError> {
    let mut removed = 0u64;
    let old: Vec<Delivery> = {
        let table = table!(txn, DELIVERIES);
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            if id_time_ms(k.value()).is_none_or(|t| t >= cutoff_ms) {
                break;
            }
            let d: Delivery = dec(v.value())?;
            if d.status != DeliveryStatus::Pending {
                out.push(d);
            }
        }
        out
    };
    for d in &old {
        let id = d.id.as_str();
        table!(txn, DELIVERIES).remove(id)?;
        table!(txn, WEBHOOK_DELIVERIES).remove((d.webhook_id.as_str(), id))?;
        table!(txn, ATTEMPTS).retain_in((id, 0)..=(id, u32::MAX), |_, _| false)?;
        removed += 1;
    }
    let old_events: Vec<(String, u64, String)> = {
        let events = table!(txn, EVENTS);
        let (deliveries, idem) = (table!(txn, DELIVERIES), table!(txn, IDEMPOTENCY));
        let mut out = Vec::new();
        for item in events.iter()? {
            let (k, v) = item?;
            let e: Event = dec(v.value())?;
            let (t, id) = k.value();
            if e.occurred_at_ms >= cutoff_ms {
                continue;
            }
            let mut kept = false;
            for d in listed_deliveries(&idem, t, id)? {
                kept |= deliveries.get(d.as_str())?.is_some();
            }
            if !kept {
                out.push((t.to_owned(), e.occurred_at_ms, id.to_owned()));
            }
        }
        out
    };
    for (t, at, id) in &old_events {
        table!(txn, EVENTS).remove((t.as_str(), id.as_str()))?;
        table!(txn, EVENT_TIMES).remove((t.as_str(), *at, id.as_str()))?;
        removed += 1;
    }
    let old_keys: Vec<(String, String)> = {
        let (idem, events) = (table!(txn, IDEMPOTENCY), table!(txn, EVENTS));
        let mut out = Vec::new();
        for item in idem.iter()? {
            let (k, v) = item?;
            let answer: IdempotentAnswer = dec(v.value())?;
            let (t, key) = k.value();
            // The record under the event id lists its deliveries: it goes
            // with the event.
            let event_kept = key.starts_with("id:")
                && events
                    .get((t, answer.event_id.as_str()))
                    .map_err(redb::Error::from)?
                    .is_some();
            if answer.at_ms < cutoff_ms && !event_kept {
                out.push((t.to_owned(), key.to_owned()));
            }
        }
        out
    };
    for (t, key) in &old_keys {
        table!(txn, IDEMPOTENCY).remove((t.as_str(), key.as_str()))?;
        removed += 1;
    }
    Ok(removed)
}
