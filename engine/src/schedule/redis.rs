//! The schedule on Redis: one sorted set per partition, `{…:p}:sched`,
//! scored by due time in ms, member `<tenant>|<delivery id>` (written by the
//! store's trigger and finish scripts, see [`crate::store::redis`]).
//!
//! Owns: claiming. One script per partition re-scores due members to
//! `now + lease` before returning them, so two engines never claim the same
//! delivery while the lease holds; partitions with nothing due are skipped,
//! starting at a random one so engines spread over them. What may happen
//! twice: an attempt, if its engine dies before recording it and the lease
//! runs out (at-least-once).

use super::{Census, Schedule};
use crate::delivery::pause::PAUSED_DUE_MS;
use crate::ids::{DeliveryId, TenantId};
use crate::store::{RedisStore, StoreError};
use async_trait::async_trait;
use redis::Script;
use std::sync::LazyLock;

const CLAIM: &str = r#"
-- KEYS: schedule; ARGV: now, limit, lease end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[3], m) end
return due
"#;

static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM));

/// The earliest due time in each schedule partition (one pipelined round trip).
async fn partition_heads(store: &RedisStore) -> Result<Vec<Option<u64>>, StoreError> {
    let mut pipe = redis::pipe();
    for p in 0..store.partitions {
        pipe.cmd("ZRANGE")
            .arg(store.schedule_key(p))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES");
    }
    let heads: Vec<Vec<(String, f64)>> = pipe.query_async(&mut store.conn()).await?;
    Ok(heads
        .iter()
        .map(|h| h.first().map(|(_, score)| *score as u64))
        .collect())
}

#[async_trait]
impl Schedule for RedisStore {
    async fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> Result<Vec<(TenantId, DeliveryId)>, StoreError> {
        // Only partitions with something due are claimed from, starting at a
        // random one so engines spread over them.
        let heads = partition_heads(self).await?;
        let start = rand::random::<u32>() % self.partitions;
        let mut claimed = Vec::new();
        for i in 0..self.partitions {
            let p = (start + i) % self.partitions;
            if claimed.len() >= limit || heads[p as usize].is_none_or(|due| due > now_ms) {
                continue;
            }
            let members: Vec<String> = CLAIM_SCRIPT
                .key(self.schedule_key(p))
                .arg(now_ms)
                .arg(limit - claimed.len())
                .arg(now_ms + lease_ms)
                .invoke_async(&mut self.conn())
                .await?;
            claimed.extend(members.iter().filter_map(|m| {
                let (t, d) = m.split_once('|')?;
                Some((TenantId::from_trusted(t), DeliveryId::from_trusted(d)))
            }));
        }
        Ok(claimed)
    }

    async fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        Ok(partition_heads(self).await?.into_iter().flatten().min())
    }

    async fn census(&self, now_ms: u64) -> Result<Census, StoreError> {
        let mut pipe = redis::pipe();
        for p in 0..self.partitions {
            let key = self.schedule_key(p);
            pipe.zcount(&key, "-inf", now_ms)
                .zcard(&key)
                .zcount(&key, PAUSED_DUE_MS, "+inf");
        }
        let counts: Vec<u64> = pipe.query_async(&mut self.conn()).await?;
        let sum = |skip: usize| -> u64 { counts.iter().skip(skip).step_by(3).sum() };
        let (due, all, paused) = (sum(0), sum(1), sum(2));
        let oldest_due_ms = partition_heads(self)
            .await?
            .into_iter()
            .flatten()
            .min()
            .filter(|&head| head <= now_ms);
        Ok(Census {
            due,
            later: all - due - paused,
            paused,
            oldest_due_ms,
        })
    }
}
