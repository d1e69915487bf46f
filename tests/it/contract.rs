//! One contract for the store and the schedule, run with the same assertions
//! against both backends: the embedded store and a real Redis.

use crate::redis_server::RedisServer;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use wasmhook::ids::{EventId, TenantId};
use wasmhook::model::{Attempt, AttemptOutcome, DeliveryStatus, Tenant, Webhook};
use wasmhook::schedule::Schedule;
use wasmhook::store::{EmbeddedStore, Ingested, NewEvent, Page, PluginUpload, RedisStore, Store};

const LEASE: u64 = 60_000;

fn webhook(tenant: &TenantId, events: &[&str]) -> Webhook {
    Webhook {
        url: "http://127.0.0.1:1/x".into(),
        timeout_ms: Some(1000),
        ..Webhook::new(
            tenant.clone(),
            "",
            events.iter().map(|e| e.to_string()).collect(),
            0,
        )
    }
}

fn event(
    tenant: &TenantId,
    id: &str,
    event_type: &str,
    key: Option<&str>,
    fingerprint: &str,
    due: u64,
) -> NewEvent {
    NewEvent {
        id: EventId::from_trusted(id),
        tenant: tenant.clone(),
        event_type: event_type.into(),
        data: RawValue::from_string(r#"{"n": 1.50}"#.into()).unwrap(),
        occurred_at_ms: 1_000,
        idempotency_key: key.map(str::to_owned),
        fingerprint: fingerprint.into(),
        only_webhook: None,
        due_at_ms: due,
    }
}

/// Tenants are created once; their first key finds them.
async fn tenants_and_their_keys(store: Arc<dyn Store>, _schedule: Arc<dyn Schedule>) {
    let t = TenantId::from_trusted("contract");
    store
        .create_tenant(
            Tenant {
                id: t.clone(),
                name: "c".into(),
                created_at_ms: 0,
            },
            "hash-1".into(),
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_tenant(
                Tenant {
                    id: t.clone(),
                    name: "again".into(),
                    created_at_ms: 0
                },
                "hash-2".into()
            )
            .await,
        Err(wasmhook::store::StoreError::Conflict(_))
    ));
    assert_eq!(
        store.tenant_by_key_hash("hash-1").await.unwrap(),
        Some(t.clone())
    );
}

/// Fan-out, idempotency, the schedule (leases, claims, re-scoring),
/// manual retry, counters and lists: one delivery's life.
async fn fan_out_idempotency_and_the_schedule(store: Arc<dyn Store>, schedule: Arc<dyn Schedule>) {
    let t = TenantId::from_trusted("contract");
    let a = webhook(&t, &["invoice.*"]);
    let b = webhook(&t, &["invoice.paid"]);
    store.put_webhook(a.clone()).await.unwrap();
    store.put_webhook(b.clone()).await.unwrap();
    assert_eq!(store.list_webhooks(&t).await.unwrap().len(), 2);

    // Fan-out, and the new deliveries are leased (due at the given time).
    let Ingested::Created {
        event: ev,
        deliveries,
        ..
    } = store
        .insert_event(event(&t, "e1", "invoice.paid", Some("k1"), "f1", 5_000))
        .await
        .unwrap()
    else {
        panic!("not created")
    };
    assert_eq!(deliveries.len(), 2);
    assert_eq!(
        store
            .get_event(&t, &ev.id)
            .await
            .unwrap()
            .unwrap()
            .data
            .get(),
        r#"{"n": 1.50}"#
    );
    assert_eq!(store.event_deliveries(&t, &ev.id).await.unwrap().len(), 2);

    // Idempotent: same key → replay; same key, other content → reuse; same id → replay.
    assert!(
        matches!(store.insert_event(event(&t, "e2", "invoice.paid", Some("k1"), "f1", 5_000)).await.unwrap(), Ingested::Replayed(p) if p.event_id == ev.id)
    );
    assert!(matches!(
        store
            .insert_event(event(&t, "e3", "invoice.paid", Some("k1"), "other", 5_000))
            .await
            .unwrap(),
        Ingested::KeyReused(_)
    ));
    assert!(matches!(
        store
            .insert_event(event(&t, "e1", "invoice.paid", None, "f1", 5_000))
            .await
            .unwrap(),
        Ingested::Replayed(_)
    ));
    assert_eq!(
        store.webhook_stats(&t, &a.id).await.unwrap().total,
        1,
        "replays do not fan out"
    );

    // Nothing is due before the lease ends; ordering by due time after.
    assert!(
        schedule
            .claim_due(4_999, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(schedule.next_due_ms().await.unwrap(), Some(5_000));
    let Ingested::Created {
        deliveries: later, ..
    } = store
        .insert_event(event(&t, "e4", "invoice.sent", None, "f4", 3_000))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(later.len(), 1);
    let first = schedule.claim_due(6_000, 1, LEASE).await.unwrap();
    assert_eq!(
        first,
        vec![(t.clone(), later[0].id.clone())],
        "earliest due first"
    );
    // A claim leases: claimed again only after the lease runs out.
    let rest = schedule.claim_due(6_000, 10, LEASE).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert!(
        schedule
            .claim_due(6_001, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        schedule
            .claim_due(6_000 + LEASE, 10, LEASE)
            .await
            .unwrap()
            .len(),
        3,
        "lease expiry"
    );

    // Re-score on failure; removal on success; counters follow.
    let mut d = store
        .get_delivery(&t, &deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    d.attempts = 1;
    d.next_attempt_at_ms = Some(500_000);
    store.finish_attempt(d.clone(), None).await.unwrap();
    let mut ok = store
        .get_delivery(&t, &deliveries[1].id)
        .await
        .unwrap()
        .unwrap();
    ok.status = DeliveryStatus::Succeeded;
    ok.next_attempt_at_ms = None;
    store.finish_attempt(ok, None).await.unwrap();
    let mut failed = store.get_delivery(&t, &later[0].id).await.unwrap().unwrap();
    failed.status = DeliveryStatus::Failed;
    failed.next_attempt_at_ms = None;
    store.finish_attempt(failed, None).await.unwrap();
    assert!(
        schedule
            .claim_due(499_999, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        schedule.claim_due(500_000, 10, LEASE).await.unwrap(),
        vec![(t.clone(), d.id.clone())]
    );
    let total = store.tenant_stats(&t).await.unwrap();
    assert_eq!(
        (total.total, total.pending, total.succeeded, total.failed),
        (3, 1, 1, 1)
    );

    // Manual retry: pending again and due now.
    let retried = store
        .retry_delivery(&t, &later[0].id, 700_000)
        .await
        .unwrap();
    assert_eq!(retried.status, DeliveryStatus::Pending);
    let due = schedule.claim_due(700_000, 10, LEASE).await.unwrap();
    assert!(due.contains(&(t.clone(), later[0].id.clone())));
    assert_eq!(store.tenant_stats(&t).await.unwrap().failed, 0);

    // Lists: newest first, status filter, other tenants see nothing.
    let page = Page {
        limit: 10,
        before: None,
        status: None,
    };
    assert_eq!(
        store.list_deliveries(&t, &a.id, page).await.unwrap().len(),
        2
    );
    let succeeded = Page {
        limit: 10,
        before: None,
        status: Some(DeliveryStatus::Succeeded),
    };
    assert_eq!(
        store
            .list_deliveries(&t, &b.id, succeeded)
            .await
            .unwrap()
            .len()
            + store
                .list_deliveries(&t, &a.id, succeeded)
                .await
                .unwrap()
                .len(),
        1
    );
    let other = TenantId::from_trusted("someone-else");
    assert!(
        store
            .get_delivery(&other, &deliveries[0].id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get_event(&other, &ev.id).await.unwrap().is_none());
    let types = store.event_types(&t).await.unwrap();
    assert_eq!(
        types
            .iter()
            .map(|t| (t.event_type.as_str(), t.count))
            .collect::<Vec<_>>(),
        [("invoice.paid", 1), ("invoice.sent", 1)]
    );
}

/// Plugin versions count up; every version stays readable; a rollback is
/// a new version carrying an old component.
async fn plugin_versions_count_up_and_roll_back(
    store: Arc<dyn Store>,
    _schedule: Arc<dyn Schedule>,
) {
    let t = TenantId::from_trusted("contract");
    let upload = |component: Vec<u8>, sha: &str, by: &str, restored_from, now_ms| PluginUpload {
        name: "fmt".into(),
        component,
        sha256: sha.into(),
        uploaded_by: by.into(),
        restored_from,
        now_ms,
    };
    let v1 = store
        .put_plugin(&t, upload(vec![1, 2, 3], "sha-a", "tenant", None, 1))
        .await
        .unwrap();
    let v2 = store
        .put_plugin(&t, upload(vec![4, 5], "sha-b", "admin", None, 2))
        .await
        .unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    let (meta, bytes) = store.current_plugin(&t, "fmt").await.unwrap().unwrap();
    assert_eq!((meta.version, bytes), (2, vec![4, 5]));
    assert_eq!(store.list_plugins(&t).await.unwrap().len(), 1);
    let (old, old_bytes) = store.plugin_version(&t, "fmt", 1).await.unwrap().unwrap();
    assert_eq!(
        (old.sha256.as_str(), old_bytes.clone()),
        ("sha-a", vec![1, 2, 3])
    );
    let v3 = store
        .put_plugin(&t, upload(old_bytes, "sha-a", "tenant", Some(1), 3))
        .await
        .unwrap();
    assert_eq!((v3.version, v3.restored_from), (3, Some(1)));
    let (meta, bytes) = store.current_plugin(&t, "fmt").await.unwrap().unwrap();
    assert_eq!(
        (meta.version, meta.sha256.as_str(), bytes),
        (3, "sha-a", vec![1, 2, 3])
    );
    let versions = store.plugin_versions(&t, "fmt").await.unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.version, v.uploaded_by.as_str()))
            .collect::<Vec<_>>(),
        [(1, "tenant"), (2, "admin"), (3, "tenant")]
    );
    assert!(store.plugin_version(&t, "fmt", 9).await.unwrap().is_none());
    assert!(store.plugin_versions(&t, "nope").await.unwrap().is_empty());
}

/// A batch is answered in order, each event on its own terms (one new,
/// one replayed by id, one reusing a key with other content).
async fn a_batch_answers_each_event_on_its_terms(
    store: Arc<dyn Store>,
    _schedule: Arc<dyn Schedule>,
) {
    let t = TenantId::from_trusted("contract");
    store
        .put_webhook(webhook(&t, &["invoice.*"]))
        .await
        .unwrap();
    store
        .put_webhook(webhook(&t, &["invoice.paid"]))
        .await
        .unwrap();
    assert!(matches!(
        store
            .insert_event(event(&t, "e1", "invoice.paid", Some("k1"), "f1", 5_000))
            .await
            .unwrap(),
        Ingested::Created { .. }
    ));
    let far = 10_000_000;
    let answers = store
        .insert_events(vec![
            event(&t, "b1", "invoice.paid", None, "fb1", far),
            event(&t, "e1", "invoice.paid", None, "f1", far),
            event(&t, "b3", "invoice.paid", Some("k1"), "other", far),
        ])
        .await
        .unwrap();
    assert!(
        matches!(&answers[0], Ingested::Created { event, deliveries, .. } if event.id.as_str() == "b1" && deliveries.len() == 2)
    );
    assert!(matches!(&answers[1], Ingested::Replayed(p) if p.event_id.as_str() == "e1"));
    assert!(matches!(&answers[2], Ingested::KeyReused(_)));
    assert!(
        store
            .get_event(&t, &EventId::from_trusted("b1"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .get_event(&t, &EventId::from_trusted("b3"))
            .await
            .unwrap()
            .is_none()
    );
}

/// With a one-second retention: finished records go, pending ones stay.
async fn retention_drops_finished_records_and_keeps_pending_ones(
    store: Arc<dyn Store>,
    _schedule: Arc<dyn Schedule>,
) {
    let t = TenantId::from_trusted("retention");
    store
        .create_tenant(
            Tenant {
                id: t.clone(),
                name: "r".into(),
                created_at_ms: 0,
            },
            "hash-r".into(),
        )
        .await
        .unwrap();
    let hook = webhook(&t, &["*"]);
    store.put_webhook(hook.clone()).await.unwrap();
    let now = wasmhook::clock::now_ms();
    let mut done = event(&t, "done", "a", Some("key-done"), "f", now);
    done.occurred_at_ms = now;
    let Ingested::Created {
        deliveries: finished,
        ..
    } = store.insert_event(done).await.unwrap()
    else {
        panic!()
    };
    let mut waiting = event(&t, "waiting", "a", None, "f", now + 3_600_000);
    waiting.occurred_at_ms = now;
    let Ingested::Created {
        deliveries: pending,
        ..
    } = store.insert_event(waiting).await.unwrap()
    else {
        panic!()
    };
    let mut d = finished[0].clone();
    d.status = DeliveryStatus::Succeeded;
    d.next_attempt_at_ms = None;
    store.finish_attempt(d, None).await.unwrap();

    tokio::time::sleep(Duration::from_millis(2_100)).await;
    store.sweep(wasmhook::clock::now_ms()).await.unwrap();

    assert!(
        store
            .get_event(&t, &EventId::from_trusted("done"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_delivery(&t, &finished[0].id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_event(&t, &EventId::from_trusted("waiting"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .get_delivery(&t, &pending[0].id)
            .await
            .unwrap()
            .is_some()
    );
    // A kept event still knows its deliveries, and its id still replays.
    let of_waiting = store
        .event_deliveries(&t, &EventId::from_trusted("waiting"))
        .await
        .unwrap();
    assert_eq!(of_waiting.len(), 1);
    assert_eq!(of_waiting[0].id, pending[0].id);
    let mut waiting_again = event(&t, "waiting", "a", None, "f", now);
    waiting_again.occurred_at_ms = now;
    assert!(matches!(
        store.insert_event(waiting_again).await.unwrap(),
        Ingested::Replayed(_)
    ));
    let page = Page {
        limit: 10,
        before: None,
        status: None,
    };
    let listed = store.list_deliveries(&t, &hook.id, page).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        vec![pending[0].id.clone()]
    );
    // An expired idempotency key no longer replays.
    let again = event(&t, "done-again", "a", Some("key-done"), "f", now);
    assert!(matches!(
        store.insert_event(again).await.unwrap(),
        Ingested::Created { .. }
    ));
}

const DAY: Duration = Duration::from_secs(86_400);

/// Every call that takes a tenant honours it: another tenant's webhook,
/// delivery or event ids find nothing, whatever the backend.
async fn calls_honour_the_tenant(store: Arc<dyn Store>, _schedule: Arc<dyn Schedule>) {
    let (owner, other) = (
        TenantId::from_trusted("owner"),
        TenantId::from_trusted("other"),
    );
    let hook = webhook(&owner, &["*"]);
    store.put_webhook(hook.clone()).await.unwrap();
    let Ingested::Created {
        event: ev,
        deliveries,
        ..
    } = store
        .insert_event(event(&owner, "own1", "a.b", None, "f-own", 5_000))
        .await
        .unwrap()
    else {
        panic!("not created")
    };
    let d = &deliveries[0];
    let page = Page {
        limit: 10,
        before: None,
        status: None,
    };
    assert_eq!(
        store
            .list_deliveries(&owner, &hook.id, page)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .list_deliveries(&other, &hook.id, page)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_delivery(&other, &d.id).await.unwrap().is_none());
    assert!(store.get_event(&other, &ev.id).await.unwrap().is_none());
    assert!(
        store
            .event_deliveries(&other, &ev.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_webhook(&other, &hook.id).await.unwrap().is_none());
    let mut failed = d.clone();
    failed.attempts = 1;
    failed.next_attempt_at_ms = Some(9_000);
    let attempt = Attempt {
        delivery_id: d.id.clone(),
        attempt: 1,
        started_at_ms: 1,
        duration_ms: 1,
        status_code: Some(500),
        response_body: None,
        error: None,
        plugin: None,
        outcome: AttemptOutcome::HttpError,
        request: Some(wasmhook::model::SentRequest {
            url: "http://127.0.0.1/h".into(),
            headers: Some("content-type: application/json\n".into()),
            timestamp: 1,
            body: Some("{}".into()),
            body_bytes: 2,
        }),
        response_headers: Some("x-a: b\n".into()),
    };
    store
        .finish_attempt(failed, Some(attempt.clone()))
        .await
        .unwrap();
    let kept = &store.attempts(&owner, &d.id).await.unwrap()[0];
    assert_eq!(kept.request, attempt.request, "the request as sent is kept");
    assert_eq!(kept.response_headers, attempt.response_headers);
    assert_eq!(store.attempts(&owner, &d.id).await.unwrap().len(), 1);
    assert!(store.attempts(&other, &d.id).await.unwrap().is_empty());
}

/// A pending delivery recorded without a due time is due now on both
/// backends (the embedded store used to keep it out of its schedule).
async fn pending_without_a_due_time_is_due_now(store: Arc<dyn Store>, schedule: Arc<dyn Schedule>) {
    let t = TenantId::from_trusted("undated");
    store.put_webhook(webhook(&t, &["*"])).await.unwrap();
    let Ingested::Created { deliveries, .. } = store
        .insert_event(event(&t, "u1", "a.b", None, "f-u1", 5_000))
        .await
        .unwrap()
    else {
        panic!("not created")
    };
    let mut d = deliveries[0].clone();
    d.next_attempt_at_ms = None;
    let before = wasmhook::clock::now_ms();
    store.finish_attempt(d.clone(), None).await.unwrap();
    let stored = store.get_delivery(&t, &d.id).await.unwrap().unwrap();
    let due = stored.next_attempt_at_ms.expect("a due time");
    assert!(due >= before, "{due} < {before}");
    let claimed = schedule
        .claim_due(wasmhook::clock::now_ms() + 1, 10, LEASE)
        .await
        .unwrap();
    assert!(claimed.iter().any(|(_, id)| id == &d.id), "{claimed:?}");
}

/// Runs each named case against a fresh embedded store and a fresh Redis
/// (a `redis-server` of its own), as `<case>::embedded` and `<case>::redis`,
/// with the given retention.
macro_rules! contract_cases {
    ($retention:expr => $($case:ident),* $(,)?) => {$(
        mod $case {
            use super::*;

            #[tokio::test]
            async fn embedded() {
                let dir = tempfile::tempdir().unwrap();
                let store = Arc::new(EmbeddedStore::open(dir.path(), $retention, 1 << 20).unwrap());
                super::$case(store.clone(), store).await;
            }

            #[tokio::test]
            async fn redis() {
                let server = RedisServer::start().await;
                let store = Arc::new(
                    RedisStore::connect(&server.url(), "contract", 4, $retention)
                        .await
                        .unwrap(),
                );
                super::$case(store.clone(), store).await;
            }
        }
    )*};
}

contract_cases!(DAY =>
    tenants_and_their_keys,
    fan_out_idempotency_and_the_schedule,
    plugin_versions_count_up_and_roll_back,
    a_batch_answers_each_event_on_its_terms,
    calls_honour_the_tenant,
    pending_without_a_due_time_is_due_now,
);
contract_cases!(Duration::from_secs(1) => retention_drops_finished_records_and_keeps_pending_ones);

/// Each engine keeps a tenant's webhooks in memory for fan-out; a change
/// made through another engine is seen at the next trigger all the same.
#[tokio::test]
async fn redis_engines_see_each_others_webhook_changes() {
    let server = RedisServer::start().await;
    let a = RedisStore::connect(&server.url(), "shared", 4, DAY)
        .await
        .unwrap();
    let b = RedisStore::connect(&server.url(), "shared", 4, DAY)
        .await
        .unwrap();
    let t = TenantId::from_trusted("fan");
    let first = webhook(&t, &["*"]);
    a.put_webhook(first.clone()).await.unwrap();
    let fanned = |ingested: Ingested| match ingested {
        Ingested::Created { deliveries, .. } => deliveries.len(),
        _ => panic!("not created"),
    };
    let at = |id: &str| event(&t, id, "invoice.paid", None, id, 5_000);
    assert_eq!(fanned(a.insert_event(at("s1")).await.unwrap()), 1);
    let second = webhook(&t, &["invoice.*"]);
    b.put_webhook(second.clone()).await.unwrap();
    assert_eq!(fanned(a.insert_event(at("s2")).await.unwrap()), 2);
    assert!(b.delete_webhook(&t, &first.id).await.unwrap());
    assert_eq!(fanned(a.insert_event(at("s3")).await.unwrap()), 1);
    b.put_webhook(Webhook {
        active: false,
        ..second
    })
    .await
    .unwrap();
    assert_eq!(fanned(a.insert_event(at("s4")).await.unwrap()), 0);
}
