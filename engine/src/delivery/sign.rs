//! Signing: the core computes HMAC-SHA256 over what a [`SignSpec`] names, with
//! the webhook's live secrets. The secret never leaves this module's callers
//! and never reaches a plugin.

use crate::model::Secret;
use crate::plugin::request::{KeyFormat, SigEncoding, SignSpec, SignedContent};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HMAC key a secret stands for under `format`.
pub fn key_bytes(secret: &Secret, format: KeyFormat) -> Vec<u8> {
    let raw = secret.expose();
    match format {
        KeyFormat::Utf8 => raw.as_bytes().to_vec(),
        KeyFormat::StandardWebhooks => {
            let b64 = raw.strip_prefix("whsec_").unwrap_or(raw);
            STANDARD
                .decode(b64)
                .unwrap_or_else(|_| raw.as_bytes().to_vec())
        }
    }
}

/// The header value: one `prefix + signature` per live secret (only the
/// current one without a rotation separator).
pub fn signature_value(
    spec: &SignSpec,
    secrets: &[&Secret],
    body: &[u8],
    delivery_id: &str,
    timestamp: u64,
) -> String {
    // The signed bytes, in pieces fed to the MAC one after the other (no
    // copy of the body, nothing formatted).
    let mut digits = itoa::Buffer::new();
    let signed: [&[u8]; 5] = match &spec.content {
        SignedContent::StandardWebhooks => [
            delivery_id.as_bytes(),
            b".",
            digits.format(timestamp).as_bytes(),
            b".",
            body,
        ],
        SignedContent::Body => [body, &[], &[], &[], &[]],
        SignedContent::Bytes(b) => [b.as_slice(), &[], &[], &[], &[]],
    };
    let used = match &spec.rotation_separator {
        Some(_) => secrets,
        None => &secrets[..secrets.len().min(1)],
    };
    // Written straight into the header value: one allocation, whatever
    // the number of live secrets.
    let mut value = String::with_capacity(used.len() * (spec.prefix.len() + 66));
    for (i, secret) in used.iter().enumerate() {
        if i > 0 {
            value.push_str(spec.rotation_separator.as_deref().unwrap_or(""));
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&key_bytes(secret, spec.key))
            .expect("HMAC takes any key length");
        for piece in signed {
            mac.update(piece);
        }
        let tag = mac.finalize().into_bytes();
        value.push_str(&spec.prefix);
        match spec.encoding {
            SigEncoding::Hex => {
                let mut hex = [0u8; 64];
                hex::encode_to_slice(tag, &mut hex).expect("64 hex digits for 32 bytes");
                value.push_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
            }
            SigEncoding::Base64 => STANDARD.encode_string(tag, &mut value),
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(content: SignedContent, encoding: SigEncoding, key: KeyFormat) -> SignSpec {
        SignSpec {
            header: "x".into(),
            prefix: "".into(),
            encoding,
            key,
            content,
            rotation_separator: None,
        }
    }

    #[test]
    fn hex_of_raw_body_with_utf8_key() {
        // echo -n '{"a":1}' | openssl dgst -sha256 -hmac 'my-webhook-secret-12345678'
        let s = Secret::new("my-webhook-secret-12345678".into());
        let v = signature_value(
            &spec(SignedContent::Body, SigEncoding::Hex, KeyFormat::Utf8),
            &[&s],
            br#"{"a":1}"#,
            "d",
            0,
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"my-webhook-secret-12345678").unwrap();
        mac.update(br#"{"a":1}"#);
        assert_eq!(v, hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn standard_webhooks_matches_the_spec_example() {
        // The example in the Standard Webhooks specification.
        let s = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        let mut sp = spec(
            SignedContent::StandardWebhooks,
            SigEncoding::Base64,
            KeyFormat::StandardWebhooks,
        );
        sp.prefix = "v1,".into();
        let v = signature_value(
            &sp,
            &[&s],
            br#"{"test": 2432232314}"#,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
        );
        assert_eq!(v, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_live_secret() {
        let a = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        let b = Secret::new("whsec_dGVzdHNlY3JldA==".into());
        let mut sp = spec(
            SignedContent::Body,
            SigEncoding::Base64,
            KeyFormat::StandardWebhooks,
        );
        sp.prefix = "v1,".into();
        sp.rotation_separator = Some(" ".into());
        let v = signature_value(&sp, &[&a, &b], b"x", "d", 1);
        assert_eq!(v.split(' ').count(), 2);
        sp.rotation_separator = None;
        assert_eq!(
            signature_value(&sp, &[&a, &b], b"x", "d", 1)
                .split(' ')
                .count(),
            1
        );
    }

    #[test]
    fn signed_bytes_can_differ_from_the_body() {
        let s = Secret::new("k".into());
        let sp = spec(
            SignedContent::Bytes(b"data".to_vec()),
            SigEncoding::Hex,
            KeyFormat::Utf8,
        );
        let body_sig = signature_value(
            &spec(SignedContent::Body, SigEncoding::Hex, KeyFormat::Utf8),
            &[&s],
            b"data",
            "d",
            0,
        );
        assert_eq!(signature_value(&sp, &[&s], b"other body", "d", 0), body_sig);
    }
}
