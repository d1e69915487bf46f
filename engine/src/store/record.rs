//! How the embedded store encodes its records.
//!
//! Most records are JSON. The two written on every delivery, the delivery
//! itself and each attempt, are postcard (a compact binary serde format)
//! behind a tag byte: about a third of their JSON size, which is B-tree pages
//! the single writer builds and syncs less often. Decoding takes either form
//! (the first byte says which), so one decoder serves every table.
//!
//! postcard is positional: changing the fields of `Delivery` or `Attempt`
//! (adding, removing, reordering, or reordering an enum's variants) changes
//! what stored bytes mean. Such a change takes a new tag and keeps a decoder
//! for the old one; the `layout_is_pinned` test fails until that is done.

use super::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// First byte of a postcard record (JSON records start with `{`).
const POSTCARD_V1: u8 = 0x01;

/// Bytes reserved for a compact record before encoding it.
const COMPACT_ROOM: usize = 256;

/// A record as JSON.
pub(crate) fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

/// A delivery or attempt record, in the compact form.
pub(crate) fn compact<T: Serialize>(value: &T) -> Vec<u8> {
    // Room for a typical delivery or attempt (about 150 bytes): growing
    // from one byte cost more than the encoding itself.
    let mut out = Vec::with_capacity(COMPACT_ROOM);
    out.push(POSTCARD_V1);
    postcard::to_io(value, &mut out).expect("records serialise");
    out
}

/// A record in either form.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&POSTCARD_V1, rest)) => postcard::from_bytes(rest)
            .map_err(|e| StoreError::Corrupt(serde::de::Error::custom(format!("postcard: {e}")))),
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeliveryId, EventId, TenantId, WebhookId};
    use crate::model::{Attempt, AttemptOutcome, Delivery, DeliveryStatus};

    fn delivery() -> Delivery {
        Delivery {
            id: DeliveryId::from_trusted("dlv_1"),
            tenant: TenantId::from_trusted("acme"),
            event_id: EventId::from_trusted("evt_1"),
            webhook_id: WebhookId::from_trusted("wh_1"),
            event_type: "invoice.paid".into(),
            status: DeliveryStatus::Pending,
            attempts: 2,
            next_attempt_at_ms: Some(1_000),
            reason: Some("receiver answered 500".into()),
            last_status_code: Some(500),
            created_at_ms: 7,
            updated_at_ms: 9,
            replay_of: None,
            rate_slot_ms: None,
        }
    }

    fn attempt() -> Attempt {
        Attempt {
            delivery_id: DeliveryId::from_trusted("dlv_1"),
            attempt: 2,
            started_at_ms: 8,
            duration_ms: 3,
            status_code: Some(500),
            response_body: Some("no".into()),
            error: None,
            plugin: Some("fmt@1".into()),
            outcome: AttemptOutcome::HttpError,
            request: None,
            response_headers: None,
        }
    }

    #[test]
    fn both_forms_decode() {
        let d = delivery();
        for bytes in [json(&d), compact(&d)] {
            let back: Delivery = decode(&bytes).unwrap();
            assert_eq!(json(&back), json(&d));
        }
        let a = attempt();
        for bytes in [json(&a), compact(&a)] {
            let back: Attempt = decode(&bytes).unwrap();
            assert_eq!(json(&back), json(&a));
        }
        assert!(compact(&d).len() * 2 < json(&d).len(), "compact is compact");
        assert!(matches!(
            decode::<Delivery>(&[POSTCARD_V1, 0xff]),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// The stored bytes of `POSTCARD_V1`. If this fails, `Delivery` or
    /// `Attempt` changed shape: give the new shape a new tag and keep
    /// decoding this one (see the module doc).
    #[test]
    fn layout_is_pinned() {
        assert_eq!(
            hex::encode(compact(&delivery())),
            "0105646c765f310461636d65056576745f310477685f310c696e766f6963652e70616964000201e8070115726563656976657220616e7377657265642035303001f40307090000"
        );
        assert_eq!(
            hex::encode(compact(&attempt())),
            "0105646c765f3102080301f40301026e6f000105666d744031010000"
        );
    }
}
