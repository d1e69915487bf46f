//! Identifier newtypes. Ids the engine mints are a short prefix plus a ULID, so
//! they sort by creation time (store tables rely on that for newest-first lists).
//! Tenant ids and event ids may also come from the caller; `parse_external`
//! checks those once at the API edge.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(prefixed_ulid($prefix))
            }

            /// Wraps an id read back from storage or a trusted source.
            pub fn from_trusted(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            /// Checks an id given by a caller (path segment or body field).
            pub fn parse_external(s: &str) -> Result<Self, InvalidId> {
                validate(s).map(|()| Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A tenant: one customer of the platform, owning webhooks, events and plugins.
    TenantId,
    "ten"
);
id_type!(
    /// A webhook (subscription): a URL plus the events it wants.
    WebhookId,
    "wh"
);
id_type!(
    /// An event an application triggered.
    EventId,
    "evt"
);
id_type!(
    /// One event going to one webhook; the same across all its attempts.
    DeliveryId,
    "dlv"
);

id_type!(
    /// A bulk replay of a webhook's events.
    ReplayId,
    "rpl"
);

/// An id a caller supplied is not acceptable.
#[derive(Debug, thiserror::Error)]
#[error("ids are 1 to 128 characters of letters, digits, '-', '_', '.' and ':'")]
pub struct InvalidId;

/// `{prefix}_{ulid}` in lowercase, made in one allocation (one is made for
/// every delivery).
fn prefixed_ulid(prefix: &str) -> String {
    let mut digits = [0u8; ulid::ULID_LEN];
    let encoded = ulid::Ulid::new().array_to_str(&mut digits);
    encoded.make_ascii_lowercase();
    let mut id = String::with_capacity(prefix.len() + 1 + ulid::ULID_LEN);
    id.push_str(prefix);
    id.push('_');
    id.push_str(encoded);
    id
}

fn validate(s: &str) -> Result<(), InvalidId> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok { Ok(()) } else { Err(InvalidId) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_sort_by_creation() {
        let a = DeliveryId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = DeliveryId::generate();
        assert!(a < b);
        assert!(a.as_str().starts_with("dlv_"));
        let digits = &a.as_str()[4..];
        assert_eq!(digits.len(), 26);
        assert_eq!(digits, digits.to_ascii_lowercase());
        assert!(ulid::Ulid::from_string(&digits.to_ascii_uppercase()).is_ok());
        assert!(DeliveryId::parse_external(a.as_str()).is_ok());
    }

    #[test]
    fn external_ids_are_checked() {
        assert!(TenantId::parse_external("acme-law").is_ok());
        assert!(TenantId::parse_external("").is_err());
        assert!(TenantId::parse_external("a/b").is_err());
        assert!(EventId::parse_external(&"x".repeat(129)).is_err());
    }
}
