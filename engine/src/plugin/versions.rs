//! What the plugin host needs of the place plugin versions are kept,
//! declared here and implemented by every store (`store` implements it for
//! any `Store`), so the host never imports the store.
//!
//! Owns: the upload a new version is made from, and the narrow set of
//! calls the host makes: the current version of a plugin (to load it), a
//! plugin's versions and whether a tenant exists (the plugins directory),
//! and adding a version (uploads, rollbacks, the plugins directory).

use crate::ids::TenantId;
use crate::model::PluginVersion;
use async_trait::async_trait;

/// Why the place versions are kept could not answer; the store's own
/// error, boxed (the API turns it back into its answer).
pub type VersionsError = Box<dyn std::error::Error + Send + Sync>;

#[async_trait]
pub trait Versions: Send + Sync {
    async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, VersionsError>;
    /// Every version of a plugin, oldest first; the last is current.
    async fn versions(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Vec<PluginVersion>, VersionsError>;
    /// The current version of a plugin and its component bytes.
    async fn current(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<(PluginVersion, Vec<u8>)>, VersionsError>;
    /// Stores a new version and makes it current, in one atomic write.
    async fn add(
        &self,
        tenant: &TenantId,
        upload: PluginUpload,
    ) -> Result<PluginVersion, VersionsError>;
}

/// A new plugin version to store: an upload, or a rollback bringing back an
/// earlier version's component.
#[derive(Debug)]
pub struct PluginUpload {
    pub name: String,
    pub component: Vec<u8>,
    pub sha256: String,
    /// `admin`, `tenant` or `plugins_dir`.
    pub uploaded_by: String,
    pub restored_from: Option<u32>,
    pub now_ms: u64,
}

impl PluginUpload {
    /// The version record this upload becomes as version `version`.
    pub fn version(&self, version: u32) -> PluginVersion {
        PluginVersion {
            name: self.name.clone(),
            version,
            sha256: self.sha256.clone(),
            size: self.component.len() as u64,
            uploaded_at_ms: self.now_ms,
            uploaded_by: self.uploaded_by.clone(),
            restored_from: self.restored_from,
        }
    }
}
