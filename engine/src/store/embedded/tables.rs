//! The embedded store's tables, their key shapes, and reading records
//! from them.

use super::*;

pub(super) type Json = &'static [u8];
pub(crate) const TENANTS: TableDefinition<&str, Json> = TableDefinition::new("tenants");
pub(crate) const API_KEYS: TableDefinition<&str, &str> = TableDefinition::new("api_keys");
pub(crate) const WEBHOOKS: TableDefinition<(&str, &str), Json> = TableDefinition::new("webhooks");
pub(crate) const EVENTS: TableDefinition<(&str, &str), Json> = TableDefinition::new("events");
/// A tenant's events by when they were accepted: (tenant, ms, event id).
pub(crate) const EVENT_TIMES: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("event_times");
pub(crate) const IDEMPOTENCY: TableDefinition<(&str, &str), Json> =
    TableDefinition::new("idempotency");
pub(crate) const DELIVERIES: TableDefinition<&str, Json> = TableDefinition::new("deliveries");
pub(crate) const WEBHOOK_DELIVERIES: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("webhook_deliveries");
pub(crate) const ATTEMPTS: TableDefinition<(&str, u32), Json> = TableDefinition::new("attempts");
pub(crate) const STATS: TableDefinition<(&str, &str), Json> = TableDefinition::new("stats");
pub(crate) const EVENT_TYPES: TableDefinition<(&str, &str), Json> =
    TableDefinition::new("event_types");
pub(crate) const SCHEDULE: TableDefinition<(u64, &str), bool> = TableDefinition::new("schedule");
pub(crate) const PLUGINS: TableDefinition<(&str, &str), u32> = TableDefinition::new("plugins");
pub(crate) const PLUGIN_VERSIONS: TableDefinition<(&str, &str, u32), Json> =
    TableDefinition::new("plugin_versions");
pub(crate) const PLUGIN_BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_blobs");
/// Bulk replays by (tenant, id), and by (tenant, `key:` idempotency key)
/// the id of the replay that key made.
pub(crate) const REPLAYS: TableDefinition<(&str, &str), Json> = TableDefinition::new("replays");
/// Each job's latest run, by job name.
pub(crate) const JOB_RUNS: TableDefinition<&str, Json> = TableDefinition::new("job_runs");
/// When `/ready` last wrote (its probe).
pub(crate) const READY: TableDefinition<&str, u64> = TableDefinition::new("ready");

/// Past every id character, for the upper end of a prefix range.
pub(super) const MAX_ID: &str = "\u{7f}";

pub(super) type Keyed2 = (&'static str, &'static str);

macro_rules! table {
    ($txn:expr, $def:expr) => {
        $txn.open_table($def).map_err(redb::Error::from)?
    };
}

pub(super) fn get_json<K: redb::Key + 'static, T: DeserializeOwned>(
    table: &impl ReadableTable<K, Json>,
    key: K::SelfType<'_>,
) -> Result<Option<T>, StoreError> {
    match table.get(key).map_err(redb::Error::from)? {
        Some(v) => Ok(Some(dec(v.value())?)),
        None => Ok(None),
    }
}

/// Every value under `(prefix, *)` of a two-part key.
pub(super) fn list_json<T: DeserializeOwned>(
    table: &impl ReadableTable<(&'static str, &'static str), Json>,
    prefix: &str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for item in table
        .range((prefix, "")..(prefix, MAX_ID))
        .map_err(redb::Error::from)?
    {
        let (_, v) = item.map_err(redb::Error::from)?;
        out.push(dec(v.value())?);
    }
    Ok(out)
}

pub(super) fn plugin_with_bytes(
    txn: &redb::ReadTransaction,
    tenant: &str,
    name: &str,
    version: u32,
) -> Result<Option<(PluginVersion, Vec<u8>)>, StoreError> {
    let Some(meta) =
        get_json::<_, PluginVersion>(&table!(txn, PLUGIN_VERSIONS), (tenant, name, version))?
    else {
        return Ok(None);
    };
    let bytes = table!(txn, PLUGIN_BLOBS)
        .get(meta.sha256.as_str())
        .map_err(redb::Error::from)?
        .ok_or(StoreError::NotFound("plugin component"))?
        .value()
        .to_vec();
    Ok(Some((meta, bytes)))
}
