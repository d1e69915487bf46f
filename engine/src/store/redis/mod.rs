//! The Redis backend: all state in one Redis (or Redis Cluster), shared by
//! any number of engines.
//!
//! # Layout
//! Every key starts with `{<prefix>:<p>}`, a hash tag naming the partition
//! `p = hash(tenant) % partitions` (global keys use `{<prefix>:g}`). All of a
//! tenant's keys share one slot, so each write below is one atomic Lua script
//! on one shard, and a Redis Cluster spreads tenants over `partitions` slots.
//! The schedule is one sorted set per partition, `{…:p}:sched`, scored by due
//! time in ms, member `<tenant>|<delivery id>`.
//!
//! # What is atomic, what may happen twice
//! - A trigger's event, idempotency keys, deliveries, counters and schedule
//!   entries are written by one script, after the idempotency check in the same
//!   script: a replay never fans out twice. Durable as Redis is configured
//!   (`appendonly yes` + `appendfsync everysec` loses at most ~1 s on a
//!   machine crash; `always` loses nothing).
//! - Claiming ([`crate::schedule::redis`]) is one script per partition: due members are re-scored to
//!   `now + lease` before they are returned, so two engines never claim the
//!   same delivery while the lease holds. If an engine dies mid-attempt the
//!   lease runs out and another engine attempts it again: at-least-once, and
//!   the receiver sees the same delivery id twice.
//! - Recording an attempt (attempt log, delivery, counters, schedule) is one
//!   script. An attempt sent but not recorded (crash in between) is repeated.
//! - Each engine keeps a tenant's webhooks (filters compiled) in memory for
//!   fan-out, with the tenant's webhook version `whv:<tenant>`, a counter that
//!   every webhook write increments in the same transaction. The trigger
//!   script refuses a fan-out computed at another version; the engine then
//!   reloads and tries again. A trigger therefore never fans out to a stale
//!   set of webhooks, whichever engine changed them, and nothing depends on a
//!   pub/sub message arriving.
//! - Retention: finished deliveries and their attempts expire `retention`
//!   after they finish; an event, its delivery list and the idempotency
//!   record under its id `retention` after its last pending delivery
//!   finishes (at once if it fanned out to nothing); `Idempotency-Key`
//!   records `retention` after the trigger. Pending deliveries and their
//!   events never expire.
//!   [`Store::sweep`] trims each webhook's delivery index by id (ids sort by
//!   time).

mod notices;
mod scripts;

use crate::store::plan::Plan;
pub use notices::Notice;
use scripts::*;

use crate::ids::{DeliveryId, EventId, TenantId, WebhookId};
use crate::model::{
    Attempt, Delivery, DeliveryStats, DeliveryStatus, Event, EventTypeSeen, LastAttempt,
    PluginVersion, Replay, Tenant, Webhook,
};
use crate::store::{
    FanOutGate, IdempotentAnswer, Ingested, NewEvent, Page, PluginUpload, Store, StoreError,
    VersionedHooks, WebhookCache,
};
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use std::collections::HashMap;
use std::time::Duration;
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    pub(crate) partitions: u32,
    ttl_secs: u64,
    ingest: Script,
    put_plugin: Script,
    finish: Script,
    create_tenant: Script,
    hooks: WebhookCache,
    gate: FanOutGate,
}

/// Stored webhook records, in id order (as the embedded store lists them).
fn webhooks_by_id(raw: &[String]) -> Result<Vec<Webhook>, StoreError> {
    let mut all: Vec<Webhook> = raw.iter().map(|r| parse(r)).collect::<Result<_, _>>()?;
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(all)
}

fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialise")
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    Ok(serde_json::from_str(s)?)
}

impl RedisStore {
    pub async fn connect(
        url: &str,
        prefix: &str,
        partitions: u32,
        retention: Duration,
    ) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(Duration::from_secs(10))
            .set_number_of_retries(6);
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(RedisStore {
            client,
            conn,
            prefix: prefix.to_owned(),
            partitions: partitions.max(1),
            ttl_secs: retention.as_secs().max(1),
            ingest: Script::new(INGEST),
            put_plugin: Script::new(PUT_PLUGIN),
            finish: Script::new(FINISH),
            create_tenant: Script::new(CREATE_TENANT),
            hooks: WebhookCache::default(),
            gate: FanOutGate::default(),
        })
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn global(&self, name: &str) -> String {
        format!("{{{}:g}}:{name}", self.prefix)
    }

    fn partition(&self, tenant: &TenantId) -> u32 {
        fnv1a(tenant.as_str()) % self.partitions
    }

    /// A key of `tenant`'s partition.
    fn key(&self, tenant: &TenantId, name: &str) -> String {
        format!("{{{}:{}}}:{name}", self.prefix, self.partition(tenant))
    }

    pub(crate) fn schedule_key(&self, p: u32) -> String {
        format!("{{{}:{p}}}:sched", self.prefix)
    }

    /// The tenant's webhooks for fan-out and their version: from memory, or
    /// read (webhooks and version in one transaction) and remembered.
    async fn hooks(&self, tenant: &TenantId) -> Result<VersionedHooks, StoreError> {
        if let Some(known) = self.hooks.get(tenant) {
            return Ok(known);
        }
        let (version, raw): (Option<i64>, Vec<String>) = redis::pipe()
            .atomic()
            .get(self.key(tenant, &format!("whv:{tenant}")))
            .hvals(self.key(tenant, &format!("wh:{tenant}")))
            .query_async(&mut self.conn())
            .await?;
        let hooks = super::with_filters_off_thread(webhooks_by_id(&raw)?).await;
        Ok(self.hooks.fill(tenant, version.unwrap_or(0), hooks))
    }

    /// One try of a trigger planned with the webhooks read at `version`:
    /// the plan back if they have changed since.
    async fn try_ingest(
        &self,
        plan: Plan,
        version: i64,
    ) -> Result<Result<Ingested, Plan>, StoreError> {
        let t = plan.event.tenant.clone();
        let event = &plan.event;
        let id_key = self.key(&t, &format!("idem:{t}:id:{}", event.id));
        let header_key = match &plan.idempotency_key {
            Some(k) => self.key(&t, &format!("idem:{t}:key:{k}")),
            None => id_key.clone(),
        };
        let mut call = self.ingest.prepare_invoke();
        call.key(&id_key)
            .key(&header_key)
            .key(self.key(&t, &format!("ev:{t}:{}", event.id)))
            .key(self.key(&t, &format!("evd:{t}:{}", event.id)))
            .key(self.schedule_key(self.partition(&t)))
            .key(self.key(&t, &format!("stats:{t}")))
            .key(self.key(&t, &format!("types:{t}")))
            .key(self.key(&t, &format!("evp:{t}:{}", event.id)))
            .arg(json(&plan.answer()))
            .arg(json(event))
            .arg(self.ttl_secs)
            .arg(plan.due_at_ms)
            .arg(t.as_str())
            .arg(&event.event_type)
            .arg(event.occurred_at_ms)
            .arg(plan.deliveries.len())
            .key(self.key(&t, &format!("whv:{t}")))
            .arg(version)
            .key(self.key(&t, &format!("evt:{t}")))
            .arg(event.id.as_str());
        for d in &plan.deliveries {
            call.key(self.key(&t, &format!("d:{}", d.id)))
                .key(self.key(&t, &format!("whd:{}", d.webhook_id)))
                .arg(d.id.as_str())
                .arg(json(d))
                .arg(d.webhook_id.as_str());
        }
        let (written, previous): (i64, String) = call.invoke_async(&mut self.conn()).await?;
        match written {
            1 => Ok(Ok(plan.created())),
            2 => Ok(Err(plan)),
            _ => {
                let prev: IdempotentAnswer = parse(&previous)?;
                Ok(Ok(plan.after(prev)))
            }
        }
    }

    /// Changes a tenant's webhooks with `change`, bumping their version in
    /// the same transaction; returns `change`'s answer.
    async fn change_webhooks<T: redis::FromRedisValue>(
        &self,
        tenant: &TenantId,
        change: impl FnOnce(&mut redis::Pipeline, String),
    ) -> Result<T, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        change(&mut pipe, self.key(tenant, &format!("wh:{tenant}")));
        pipe.incr(self.key(tenant, &format!("whv:{tenant}")), 1)
            .ignore();
        let (answer,): (T,) = pipe.query_async(&mut self.conn()).await?;
        self.hooks.forget(tenant);
        Ok(answer)
    }

    async fn finish_script(
        &self,
        d: &Delivery,
        attempt: Option<&Attempt>,
    ) -> Result<(), StoreError> {
        let due_now;
        let d = if d.status == DeliveryStatus::Pending && d.next_attempt_at_ms.is_none() {
            due_now = super::due_if_pending(d.clone(), crate::clock::now_ms());
            &due_now
        } else {
            d
        };
        let t = &d.tenant;
        let next = match (d.status, d.next_attempt_at_ms) {
            (DeliveryStatus::Pending, Some(due)) => due.to_string(),
            _ => String::new(),
        };
        let status = serde_json::to_value(d.status)?;
        let last = attempt.map(LastAttempt::of);
        let _: i64 = self
            .finish
            .key(self.key(t, &format!("d:{}", d.id)))
            .key(self.key(t, &format!("att:{}", d.id)))
            .key(self.schedule_key(self.partition(t)))
            .key(self.key(t, &format!("stats:{t}")))
            .key(self.key(t, &format!("ev:{t}:{}", d.event_id)))
            .key(self.key(t, &format!("evp:{t}:{}", d.event_id)))
            .key(self.key(t, &format!("evd:{t}:{}", d.event_id)))
            .key(self.key(t, &format!("idem:{t}:id:{}", d.event_id)))
            .key(self.key(t, &format!("errors:{t}")))
            .arg(json(d))
            .arg(attempt.map(json).unwrap_or_default())
            .arg(status.as_str().unwrap_or_default())
            .arg(d.webhook_id.as_str())
            .arg(format!("{t}|{}", d.id))
            .arg(next)
            .arg(self.ttl_secs)
            .arg(attempt.map_or(0, |a| a.duration_ms))
            .arg(last.as_ref().map_or(0, |l| l.at_ms()))
            .arg(match &last {
                Some(LastAttempt::Succeeded { .. }) => "s",
                Some(LastAttempt::Failed { .. }) => "f",
                Some(LastAttempt::Skipped { .. }) => "k",
                None => "",
            })
            .arg(match &last {
                Some(LastAttempt::Failed { error, .. }) => error.as_str(),
                _ => "",
            })
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn stats_fields(&self, tenant: &TenantId) -> Result<HashMap<String, i64>, StoreError> {
        Ok(self
            .conn()
            .hgetall(self.key(tenant, &format!("stats:{tenant}")))
            .await?)
    }
}

fn stats_of(fields: &HashMap<String, i64>, webhook: &str) -> DeliveryStats {
    let get = |name: &str| {
        fields
            .get(&format!("{webhook}:{name}"))
            .copied()
            .unwrap_or(0)
            .max(0) as u64
    };
    let at = |name: &str| Some(get(name)).filter(|&ms| ms > 0);
    DeliveryStats {
        total: get("total"),
        pending: get("pending"),
        succeeded: get("succeeded"),
        failed: get("failed"),
        skipped: get("skipped"),
        attempts: get("attempts"),
        attempt_duration_ms_total: get("duration"),
        last_attempt_at_ms: at("last_attempt_at"),
        last_success_at_ms: at("last_success_at"),
        last_failure_at_ms: at("last_failure_at"),
        last_error: None,
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn create_tenant(&self, tenant: Tenant, api_key_hash: String) -> Result<(), StoreError> {
        let created: i64 = self
            .create_tenant
            .key(self.global("tenants"))
            .key(self.global("apikeys"))
            .arg(tenant.id.as_str())
            .arg(json(&tenant))
            .arg(api_key_hash)
            .invoke_async(&mut self.conn())
            .await?;
        if created == 0 {
            return Err(StoreError::Conflict("tenant"));
        }
        Ok(())
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let raw: Option<String> = self
            .conn()
            .hget(self.global("tenants"), id.as_str())
            .await?;
        raw.map(|r| parse(&r)).transpose()
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let raw: Vec<String> = self.conn().hvals(self.global("tenants")).await?;
        let mut all: Vec<Tenant> = raw.iter().map(|r| parse(r)).collect::<Result<_, _>>()?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    async fn tenant_by_key_hash(&self, hash: &str) -> Result<Option<TenantId>, StoreError> {
        let raw: Option<String> = self.conn().hget(self.global("apikeys"), hash).await?;
        Ok(raw.map(TenantId::from_trusted))
    }

    async fn put_webhook(&self, webhook: Webhook) -> Result<(), StoreError> {
        let record = json(&webhook);
        let _: i64 = self
            .change_webhooks(&webhook.tenant, |pipe, key| {
                pipe.hset(key, webhook.id.as_str(), record);
            })
            .await?;
        Ok(())
    }

    async fn get_webhook(
        &self,
        tenant: &TenantId,
        id: &WebhookId,
    ) -> Result<Option<Webhook>, StoreError> {
        let raw: Option<String> = self
            .conn()
            .hget(self.key(tenant, &format!("wh:{tenant}")), id.as_str())
            .await?;
        raw.map(|r| parse(&r)).transpose()
    }

    async fn list_webhooks(&self, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError> {
        let raw: Vec<String> = self
            .conn()
            .hvals(self.key(tenant, &format!("wh:{tenant}")))
            .await?;
        webhooks_by_id(&raw)
    }

    async fn delete_webhook(&self, tenant: &TenantId, id: &WebhookId) -> Result<bool, StoreError> {
        let removed: i64 = self
            .change_webhooks(tenant, |pipe, key| {
                pipe.hdel(key, id.as_str());
            })
            .await?;
        Ok(removed > 0)
    }

    async fn insert_event(&self, new: NewEvent) -> Result<Ingested, StoreError> {
        // Another engine may change the webhooks between our read and the
        // script; a few tries always suffice unless they change nonstop.
        let mut new = new;
        for _ in 0..5 {
            let (version, hooks) = self.hooks(&new.tenant).await?;
            let plan = Plan::make(&self.gate, hooks, new).await;
            match self.try_ingest(plan, version).await? {
                Ok(done) => return Ok(done),
                Err(stale) => new = stale.into_new(),
            }
            self.hooks.forget(&new.tenant);
        }
        Err(StoreError::Commit(
            "the tenant's webhooks kept changing during the trigger; nothing was written".into(),
        ))
    }

    async fn get_event(
        &self,
        tenant: &TenantId,
        id: &EventId,
    ) -> Result<Option<Event>, StoreError> {
        let raw: Option<String> = self
            .conn()
            .get(self.key(tenant, &format!("ev:{tenant}:{id}")))
            .await?;
        raw.map(|r| parse(&r)).transpose()
    }

    async fn event_deliveries(
        &self,
        tenant: &TenantId,
        id: &EventId,
    ) -> Result<Vec<Delivery>, StoreError> {
        let ids: Vec<String> = self
            .conn()
            .lrange(self.key(tenant, &format!("evd:{tenant}:{id}")), 0, -1)
            .await?;
        self.deliveries_by_id(tenant, &ids).await
    }

    async fn event_types(&self, tenant: &TenantId) -> Result<Vec<EventTypeSeen>, StoreError> {
        let fields: HashMap<String, u64> = self
            .conn()
            .hgetall(self.key(tenant, &format!("types:{tenant}")))
            .await?;
        let mut out: Vec<EventTypeSeen> = fields
            .iter()
            .filter_map(|(k, count)| {
                let t = k.strip_prefix("c:")?;
                Some(EventTypeSeen {
                    event_type: t.to_owned(),
                    count: *count,
                    last_seen_ms: fields.get(&format!("l:{t}")).copied().unwrap_or(0),
                })
            })
            .collect();
        out.sort_by(|a, b| a.event_type.cmp(&b.event_type));
        Ok(out)
    }

    async fn get_delivery(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
    ) -> Result<Option<Delivery>, StoreError> {
        let raw: Option<String> = self
            .conn()
            .get(self.key(tenant, &format!("d:{id}")))
            .await?;
        let d: Option<Delivery> = raw.map(|r| parse(&r)).transpose()?;
        Ok(d.filter(|d| &d.tenant == tenant))
    }

    async fn list_deliveries(
        &self,
        tenant: &TenantId,
        webhook: &WebhookId,
        page: Page<'_>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let key = self.key(tenant, &format!("whd:{webhook}"));
        let mut upper = match page.before {
            Some(b) => format!("({b}"),
            None => "+".to_owned(),
        };
        let mut out = Vec::new();
        loop {
            let batch: Vec<String> = redis::cmd("ZREVRANGEBYLEX")
                .arg(&key)
                .arg(&upper)
                .arg("-")
                .arg("LIMIT")
                .arg(0)
                .arg(page.limit.max(50))
                .query_async(&mut self.conn())
                .await?;
            let Some(last) = batch.last() else { break };
            upper = format!("({last}");
            for d in self.deliveries_by_id(tenant, &batch).await? {
                if page.status.is_none_or(|s| s == d.status) {
                    out.push(d);
                    if out.len() >= page.limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn attempts(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
    ) -> Result<Vec<Attempt>, StoreError> {
        let raw: Vec<String> = self
            .conn()
            .lrange(self.key(tenant, &format!("att:{id}")), 0, -1)
            .await?;
        raw.iter().map(|r| parse(r)).collect()
    }

    async fn finish_attempt(
        &self,
        delivery: Delivery,
        attempt: Option<Attempt>,
    ) -> Result<(), StoreError> {
        self.finish_script(&delivery, attempt.as_ref()).await
    }

    async fn list_events(
        &self,
        tenant: &TenantId,
        q: crate::store::EventQuery<'_>,
    ) -> Result<crate::store::EventList, StoreError> {
        let t = tenant;
        let index = self.key(t, &format!("evt:{t}"));
        // Highest score first; the cursor's own score again, past its id.
        let max = match (q.before, q.until_ms) {
            (Some((ms, _)), Some(until)) if until <= ms => format!("({until}"),
            (Some((ms, _)), _) => ms.to_string(),
            (None, Some(until)) => format!("({until}"),
            (None, None) => "+inf".into(),
        };
        let min = q.since_ms.map_or("-inf".into(), |s| s.to_string());
        let mut list = crate::store::EventList::default();
        let (mut offset, mut scanned) = (0usize, 0usize);
        loop {
            let batch: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&index)
                .arg(&max)
                .arg(&min)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(offset)
                .arg(500)
                .query_async(&mut self.conn())
                .await?;
            offset += batch.len();
            let wanted: Vec<(u64, String)> = batch
                .iter()
                .map(|(id, score)| (*score as u64, id.clone()))
                .filter(|(ms, id)| {
                    q.before
                        .is_none_or(|(b_ms, b_id)| *ms != b_ms || id.as_str() < b_id)
                })
                .collect();
            let keys: Vec<String> = wanted
                .iter()
                .map(|(_, id)| self.key(t, &format!("ev:{t}:{id}")))
                .collect();
            let raw: Vec<Option<String>> = if keys.is_empty() {
                Vec::new()
            } else {
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut self.conn())
                    .await?
            };
            for ((ms, id), raw) in wanted.into_iter().zip(raw) {
                scanned += 1;
                if let Some(raw) = raw {
                    let e: Event = parse(&raw)?;
                    if q.event_type.is_none_or(|ty| e.event_type == ty) {
                        list.events.push(e);
                    }
                }
                if list.events.len() >= q.limit || scanned >= crate::store::EVENT_SCAN {
                    list.next = Some((ms, id));
                    return Ok(list);
                }
            }
            if batch.len() < 500 {
                return Ok(list);
            }
        }
    }

    async fn add_deliveries(
        &self,
        tenant: &TenantId,
        event: &EventId,
        deliveries: Vec<Delivery>,
    ) -> Result<(), StoreError> {
        let t = tenant;
        let script = Script::new(ADD_DELIVERIES);
        let mut call = script.prepare_invoke();
        call.key(self.key(t, &format!("ev:{t}:{event}")))
            .key(self.key(t, &format!("evd:{t}:{event}")))
            .key(self.schedule_key(self.partition(t)))
            .key(self.key(t, &format!("stats:{t}")))
            .key(self.key(t, &format!("evp:{t}:{event}")))
            .key(self.key(t, &format!("idem:{t}:id:{event}")))
            .arg(t.as_str())
            .arg(deliveries.len());
        for d in &deliveries {
            call.key(self.key(t, &format!("d:{}", d.id)))
                .key(self.key(t, &format!("whd:{}", d.webhook_id)))
                .arg(d.id.as_str())
                .arg(json(d))
                .arg(d.webhook_id.as_str())
                .arg(d.next_attempt_at_ms.unwrap_or_else(crate::clock::now_ms));
        }
        let added: i64 = call.invoke_async(&mut self.conn()).await?;
        if added == 0 {
            return Err(StoreError::NotFound("event"));
        }
        self.publish("wake".into()).await?;
        Ok(())
    }

    async fn put_replay(&self, replay: Replay) -> Result<Option<Replay>, StoreError> {
        let t = &replay.tenant;
        let earlier: Option<String> = scripts::PUT_REPLAY
            .key(self.key(t, &format!("replaykeys:{t}")))
            .key(self.key(t, &format!("replays:{t}")))
            .arg(replay.idempotency_key.as_deref().unwrap_or(""))
            .arg(replay.id.as_str())
            .arg(json(&replay))
            .invoke_async(&mut self.conn())
            .await?;
        earlier.map(|r| parse(&r)).transpose()
    }

    async fn get_replay(
        &self,
        tenant: &TenantId,
        id: &crate::ids::ReplayId,
    ) -> Result<Option<Replay>, StoreError> {
        let raw: Option<String> = self
            .conn()
            .hget(self.key(tenant, &format!("replays:{tenant}")), id.as_str())
            .await?;
        raw.map(|r| parse(&r)).transpose()
    }

    async fn retry_delivery(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
        now_ms: u64,
    ) -> Result<Delivery, StoreError> {
        let mut d = self
            .get_delivery(tenant, id)
            .await?
            .ok_or(StoreError::NotFound("delivery"))?;
        d.reopen(now_ms);
        self.finish_script(&d, None).await?;
        self.publish("wake".into()).await?;
        Ok(d)
    }

    async fn webhook_stats(
        &self,
        tenant: &TenantId,
        id: &WebhookId,
    ) -> Result<DeliveryStats, StoreError> {
        let mut stats = stats_of(&self.stats_fields(tenant).await?, id.as_str());
        stats.last_error = self
            .conn()
            .hget(self.key(tenant, &format!("errors:{tenant}")), id.as_str())
            .await?;
        Ok(stats)
    }

    async fn stats_by_webhook(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(String, DeliveryStats)>, StoreError> {
        let fields = self.stats_fields(tenant).await?;
        let mut webhooks: Vec<&str> = fields
            .keys()
            .filter_map(|k| k.split_once(':').map(|(w, _)| w))
            .collect();
        webhooks.sort_unstable();
        webhooks.dedup();
        let mut errors: HashMap<String, String> = self
            .conn()
            .hgetall(self.key(tenant, &format!("errors:{tenant}")))
            .await?;
        Ok(webhooks
            .into_iter()
            .map(|w| {
                let mut stats = stats_of(&fields, w);
                stats.last_error = errors.remove(w);
                (w.to_owned(), stats)
            })
            .collect())
    }

    async fn put_plugin(
        &self,
        tenant: &TenantId,
        upload: PluginUpload,
    ) -> Result<PluginVersion, StoreError> {
        let t = tenant;
        let name = upload.name.as_str();
        let mut conn = self.conn();
        // The blob goes first: a version never points at a missing component.
        let _: () = conn
            .set(
                self.key(t, &format!("blob:{t}:{}", upload.sha256)),
                upload.component.as_slice(),
            )
            .await?;
        // Numbering and making current in one script: concurrent uploads
        // cannot leave an older version current.
        let record: String = self
            .put_plugin
            .key(self.key(t, &format!("plugin-seq:{t}:{name}")))
            .key(self.key(t, &format!("pluginv:{t}:{name}")))
            .key(self.key(t, &format!("plugins:{t}")))
            .arg(name)
            .arg(json(&upload.version(0)))
            .invoke_async(&mut conn)
            .await?;
        let meta: PluginVersion = parse(&record)?;
        self.publish(format!("plugin\u{1f}{t}\u{1f}{name}\u{1f}{}", meta.version))
            .await?;
        Ok(meta)
    }

    async fn plugin_versions(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Vec<PluginVersion>, StoreError> {
        let t = tenant;
        let all: HashMap<u32, String> = self
            .conn()
            .hgetall(self.key(t, &format!("pluginv:{t}:{name}")))
            .await?;
        let mut out = all
            .values()
            .map(|raw| parse::<PluginVersion>(raw))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|v| v.version);
        Ok(out)
    }

    async fn plugin_version(
        &self,
        tenant: &TenantId,
        name: &str,
        version: u32,
    ) -> Result<Option<(PluginVersion, Vec<u8>)>, StoreError> {
        let t = tenant;
        let mut conn = self.conn();
        let raw: Option<String> = conn
            .hget(self.key(t, &format!("pluginv:{t}:{name}")), version)
            .await?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let meta: PluginVersion = parse(&raw)?;
        let bytes: Option<Vec<u8>> = conn
            .get(self.key(t, &format!("blob:{t}:{}", meta.sha256)))
            .await?;
        Ok(Some((
            meta,
            bytes.ok_or(StoreError::NotFound("plugin component"))?,
        )))
    }

    async fn current_plugin(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<(PluginVersion, Vec<u8>)>, StoreError> {
        let t = tenant;
        let version: Option<u32> = self
            .conn()
            .hget(self.key(t, &format!("plugins:{t}")), name)
            .await?;
        match version {
            Some(version) => self.plugin_version(t, name, version).await,
            None => Ok(None),
        }
    }

    async fn list_plugins(&self, tenant: &TenantId) -> Result<Vec<PluginVersion>, StoreError> {
        let t = tenant;
        let current: HashMap<String, u32> = self
            .conn()
            .hgetall(self.key(t, &format!("plugins:{t}")))
            .await?;
        let mut out = Vec::new();
        for (name, version) in current {
            let raw: Option<String> = self
                .conn()
                .hget(self.key(t, &format!("pluginv:{t}:{name}")), version)
                .await?;
            if let Some(raw) = raw {
                out.push(parse::<PluginVersion>(&raw)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Keys expire by themselves; what is left is each webhook's delivery
    /// index, whose members older than the retention are dropped once their
    /// delivery has expired (pending ones never do).
    async fn sweep(&self, now_ms: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(self.ttl_secs * 1000);
        let oldest_kept = format!(
            "({}_{}",
            DeliveryId::PREFIX,
            ulid::Ulid::from_parts(cutoff, 0).to_string().to_lowercase()
        );
        let mut removed = 0u64;
        for tenant in self.list_tenants().await? {
            let t = &tenant.id;
            // The events index keeps members whose events expired.
            let index = self.key(t, &format!("evt:{t}"));
            let old: Vec<String> = self.conn().zrangebyscore(&index, "-inf", cutoff).await?;
            self.drop_gone(&index, &old, |id| self.key(t, &format!("ev:{t}:{id}")))
                .await?;
            for hook in self.list_webhooks(t).await? {
                let index = self.key(t, &format!("whd:{}", hook.id));
                let old: Vec<String> = redis::cmd("ZRANGEBYLEX")
                    .arg(&index)
                    .arg("-")
                    .arg(&oldest_kept)
                    .query_async(&mut self.conn())
                    .await?;
                removed += self
                    .drop_gone(&index, &old, |id| self.key(t, &format!("d:{id}")))
                    .await?;
            }
        }
        Ok(removed)
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let _: () = self
            .conn()
            .pset_ex(self.global("ready"), crate::clock::now_ms(), 60_000)
            .await?;
        Ok(())
    }

    async fn take_rate(
        &self,
        tenant: &TenantId,
        name: &str,
        rate: crate::limit::Rate,
        n: u32,
        now_ms: u64,
    ) -> Result<Result<(), Option<std::time::Duration>>, StoreError> {
        if n > rate.burst {
            return Ok(Err(None));
        }
        let wait_ms: f64 = scripts::TAKE_RATE
            .key(self.key(tenant, &format!("rate:{tenant}:{name}")))
            .arg(now_ms)
            .arg(rate.interval_ms())
            .arg(rate.tolerance_ms())
            .arg(n)
            .invoke_async::<String>(&mut self.conn())
            .await?
            .parse()
            .unwrap_or(0.0);
        Ok(if wait_ms > 0.0 {
            Err(Some(std::time::Duration::from_secs_f64(wait_ms / 1000.0)))
        } else {
            Ok(())
        })
    }

    async fn reserve_rate(
        &self,
        tenant: &TenantId,
        name: &str,
        rate: crate::limit::Rate,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let go: String = scripts::RESERVE_RATE
            .key(self.key(tenant, &format!("rate:{tenant}:{name}")))
            .arg(now_ms)
            .arg(rate.interval_ms())
            .arg(rate.tolerance_ms())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(go.parse::<f64>().map_or(now_ms, |g| g.ceil() as u64))
    }

    async fn hold_rate(
        &self,
        tenant: &TenantId,
        name: &str,
        rate: crate::limit::Rate,
        until_ms: u64,
    ) -> Result<(), StoreError> {
        let _: i64 = scripts::HOLD_RATE
            .key(self.key(tenant, &format!("rate:{tenant}:{name}")))
            .arg(until_ms)
            .arg(rate.interval_ms())
            .arg(rate.tolerance_ms())
            .arg(crate::clock::now_ms())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn announce_breaker(
        &self,
        webhook: &WebhookId,
        open_until: Option<u64>,
    ) -> Result<(), StoreError> {
        let until = open_until.map(|u| u.to_string()).unwrap_or_default();
        self.publish(format!("breaker\u{1f}{webhook}\u{1f}{until}"))
            .await
    }

    async fn take_job_lease(
        &self,
        job: &str,
        holder: &str,
        until_ms: u64,
    ) -> Result<bool, StoreError> {
        let ttl = until_ms.saturating_sub(crate::clock::now_ms()).max(1);
        let taken: i64 = scripts::TAKE_LEASE
            .key(self.global(&format!("job:{job}:lease")))
            .arg(holder)
            .arg(ttl)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(taken == 1)
    }

    async fn release_job_lease(&self, job: &str, holder: &str) -> Result<(), StoreError> {
        let _: i64 = scripts::RELEASE_LEASE
            .key(self.global(&format!("job:{job}:lease")))
            .arg(holder)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn claim_job_time(&self, job: &str, at_ms: u64) -> Result<bool, StoreError> {
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.global(&format!("job:{job}:at:{at_ms}")))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(86_400_000)
            .query_async(&mut self.conn())
            .await?;
        Ok(claimed.is_some())
    }

    async fn put_job_run(&self, job: &str, run: &crate::jobs::JobRun) -> Result<(), StoreError> {
        let _: () = self
            .conn()
            .hset(self.global("jobs"), job, json(run))
            .await?;
        Ok(())
    }

    async fn job_runs(&self) -> Result<Vec<(String, crate::jobs::JobRun)>, StoreError> {
        let raw: HashMap<String, String> = self.conn().hgetall(self.global("jobs")).await?;
        raw.into_iter()
            .map(|(job, run)| Ok((job, parse(&run)?)))
            .collect()
    }
}

impl RedisStore {
    /// Removes from the sorted set `index` those of `members` whose record
    /// (`record(member)`) is gone; how many.
    async fn drop_gone(
        &self,
        index: &str,
        members: &[String],
        record: impl Fn(&str) -> String,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        for chunk in members.chunks(500) {
            let mut pipe = redis::pipe();
            for m in chunk {
                pipe.exists(record(m));
            }
            let exists: Vec<bool> = pipe.query_async(&mut self.conn()).await?;
            let gone: Vec<&String> = chunk
                .iter()
                .zip(exists)
                .filter(|(_, e)| !e)
                .map(|(m, _)| m)
                .collect();
            if !gone.is_empty() {
                let n: u64 = self.conn().zrem(index, gone).await?;
                removed += n;
            }
        }
        Ok(removed)
    }

    async fn deliveries_by_id(
        &self,
        tenant: &TenantId,
        ids: &[String],
    ) -> Result<Vec<Delivery>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.key(tenant, &format!("d:{id}")))
            .collect();
        let raw: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await?;
        raw.into_iter().flatten().map(|r| parse(&r)).collect()
    }
}
