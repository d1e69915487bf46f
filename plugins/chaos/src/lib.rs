//! A plugin that misbehaves on purpose, for the engine's sandbox tests. The
//! webhook's `plugin_config.mode` picks what it does:
//!
//! - `ok` (default): a small JSON body, like any well-behaved plugin;
//! - `loop`: spins forever (the CPU deadline must end the call);
//! - `hog`: allocates until the memory cap stops it;
//! - `trap`: panics (a trap: the instance must be dropped);
//! - `error`: returns an error result;
//! - `host-header` / `crlf-header` / `signature-header`: a request with a
//!   forbidden or malformed header;
//! - `print`: writes to stdout and stderr (routed to the engine's logs);
//! - `sleep`: sleeps for an hour (a plugin may not wait: the call traps);
//! - `clock`: reports what the WASI clocks say (frozen at the delivery time);
//! - `count`: reports how many calls this instance served (instance reuse).
//!
//! Never upload it for real webhooks.

use std::sync::atomic::{AtomicU64, Ordering};
use wasmhook_sdk::prelude::*;

static CALLS: AtomicU64 = AtomicU64::new(0);

pub struct Chaos;

impl Plugin for Chaos {
    fn transform(input: &Input) -> Result<Request> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        let ok = || Request::json(&json!({"event": input.event.id, "mode": "ok"}));
        match input.webhook.config_str("mode", "ok") {
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "hog" => {
                // Reserving grows linear memory without touching it, so the
                // cap is hit long before the CPU deadline.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(Vec::with_capacity(4 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("chaos: trap on purpose"),
            "error" => Err(Error("chaos: error on purpose".into())),
            "host-header" => Ok(ok()?.header("Host", "evil.example")),
            "crlf-header" => Ok(ok()?.header("x-injected", "a\r\nx-evil: 1")),
            "signature-header" => Ok(ok()?
                .header("x-chaos-signature", "forged")
                .sign(Signature::hmac_sha256_hex("x-chaos-signature"))),
            "print" => {
                println!("chaos: hello from stdout for {}", input.event.id);
                eprintln!("chaos: hello from stderr");
                ok()
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                ok()
            }
            "clock" => {
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                Request::json(&json!({"wall_clock": wall, "timestamp": input.delivery.timestamp}))
            }
            "count" => Request::json(&json!({"calls": calls})),
            _ => ok(),
        }
    }
}

export_plugin!(Chaos);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmhook_sdk::{Decision, run};

    #[test]
    fn modes() {
        let input = Input::test("a.b", json!({}));
        assert!(matches!(run::<Chaos>(&input), Ok(Decision::Deliver(_))));
        let input = Input::test("a.b", json!({})).with_config(json!({"mode": "error"}));
        assert!(run::<Chaos>(&input).is_err());
        let input = Input::test("a.b", json!({})).with_config(json!({"mode": "host-header"}));
        let Ok(Decision::Deliver(req)) = run::<Chaos>(&input) else {
            panic!("no request")
        };
        assert_eq!(req.header_value("host"), Some("evil.example"));
    }
}
