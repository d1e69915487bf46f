//! The on-disk cache of compiled plugins, so a restart does not recompile.
//!
//! Files are `<sha256 of the upload>-<engine compatibility hash>.cwasm`,
//! written only by this engine from components it compiled itself (write to
//! a temporary file, then rename). Deserialising runs native code without
//! checks, so it is only ever done on these files, never on uploaded bytes:
//! an upload always goes through `Component::new`, which refuses precompiled
//! artifacts. A file that does not load (another wasmtime, a torn write) is
//! removed and the component compiled again. Two engines sharing the
//! directory may both write the same file: the rename makes that harmless.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct DiskCache {
    dir: PathBuf,
    compat: String,
}

impl DiskCache {
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Fixed-key SipHash: the same engine build and settings give the
        // same name; anything else misses (and wasmtime checks again).
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(DiskCache {
            dir: dir.to_owned(),
            compat: format!("{:016x}", hasher.finish()),
        })
    }

    fn path(&self, sha256: &str) -> Option<PathBuf> {
        // Only our own hex digests name files here.
        let ok = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| self.dir.join(format!("{sha256}-{}.cwasm", self.compat)))
    }

    /// The compiled component for these bytes, if this engine cached it.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `save` from a component this engine
        // compiled; its name carries the engine's compatibility hash.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "dropping an unusable compiled plugin");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Removes every file here but this engine build's compiled components
    /// of the hashes in `keep` (temporary files an hour old go too: their
    /// writer died). How many files went.
    pub fn prune(&self, keep: &std::collections::HashSet<String>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let ours = format!("-{}.cwasm", self.compat);
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let kept = match name.strip_suffix(&ours) {
                Some(sha256) => keep.contains(sha256),
                // A write in progress, unless it is old.
                None if name.contains(".tmp") => entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age < std::time::Duration::from_secs(3600)),
                None => !name.ends_with(".cwasm"),
            };
            if !kept && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Keeps a compiled component for the next start. Failing to write only
    /// costs a recompile later, so errors are logged, not returned.
    pub fn save(&self, sha256: &str, component: &Component) {
        let Some(path) = self.path(sha256) else {
            return;
        };
        let written = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                // Unique per process and write, so concurrent writers never
                // share a temporary file.
                static WRITES: AtomicU64 = AtomicU64::new(0);
                let n = WRITES.fetch_add(1, Ordering::Relaxed);
                let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
                std::fs::write(&tmp, bytes)
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .map_err(|e| e.to_string())
            });
        if let Err(error) = written {
            tracing::warn!(file = %path.display(), %error, "cannot cache a compiled plugin");
        }
    }
}
