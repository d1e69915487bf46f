//! Per-origin limits: at most `origin_concurrency` attempts in flight to one
//! origin (scheme, host and port) at a time. A burst of due deliveries to
//! one receiver then waits its turn instead of opening a connection per
//! delivery: the receiver sees a bounded number of connections, and the
//! engine keeps a small, warm set of them (hundreds of connections to one
//! host cost a third more CPU per request than tens, measured on the bench
//! machine). Waiters are served in order.
//!
//! Owns the table of origins and their slots; an origin is forgotten once
//! nothing holds or waits for its slots and the table has grown. What may
//! happen twice: nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The table is swept of idle origins when it grows past this.
const SWEEP_AT: usize = 1024;

pub struct Origins {
    per_origin: usize,
    table: Mutex<Table>,
}

struct Table {
    /// Looked up on every attempt: a fast hash (foldhash), not SipHash.
    slots: foldhash::HashMap<String, Arc<Semaphore>>,
    sweep_at: usize,
}

/// A slot to one origin, held for the length of an exchange.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    /// How long the attempt waited for it (zero: a slot was free).
    pub waited: Duration,
}

/// No slot came free in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "not sent: attempts in flight to {origin} stayed at the origin_concurrency limit ({in_flight}) for {waited_ms} ms"
)]
pub struct Busy {
    pub origin: String,
    pub in_flight: usize,
    pub waited_ms: u64,
}

/// Where a webhook's deliveries go: its URL, parsed, and that URL's origin.
/// Made once per delivery to attempt (as it is handed over or read back),
/// used for its admission, its slot and its request.
pub struct Target {
    pub uri: hyper::Uri,
    pub origin: std::sync::Arc<str>,
}

impl Target {
    /// The target of a webhook URL, which was checked when it was written.
    pub fn of(url: &str) -> Target {
        let uri: hyper::Uri = url.parse().expect("webhook URLs are checked on write");
        let origin = origin(&uri).into();
        Target { uri, origin }
    }
}

/// `scheme://host:port` of `uri`: what one pool of connections serves. No
/// user info or path, so it is safe to show.
pub fn origin(uri: &hyper::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or_default();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    // Made for every delivery: pieces pushed, not a `format!`.
    let mut origin = String::with_capacity(scheme.len() + host.len() + 9);
    origin.push_str(scheme);
    origin.push_str("://");
    origin.push_str(host);
    origin.push(':');
    origin.push_str(itoa::Buffer::new().format(port));
    origin
}

impl Origins {
    pub fn new(per_origin: usize) -> Self {
        Origins {
            per_origin: per_origin.max(1),
            table: Mutex::new(Table {
                slots: foldhash::HashMap::default(),
                sweep_at: SWEEP_AT,
            }),
        }
    }

    /// A slot to `origin` (see [`origin`]), waiting until `until` at most.
    pub async fn acquire(&self, origin: &str, until: Instant) -> Result<Slot, Busy> {
        let semaphore = self.semaphore(origin);
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(Slot {
                _permit: permit,
                waited: Duration::ZERO,
            });
        }
        let started = Instant::now();
        match tokio::time::timeout_at(until, semaphore.acquire_owned()).await {
            Ok(permit) => Ok(Slot {
                _permit: permit.expect("origin semaphores are never closed"),
                waited: started.elapsed(),
            }),
            Err(_) => Err(Busy {
                origin: origin.to_owned(),
                in_flight: self.per_origin,
                waited_ms: started.elapsed().as_millis() as u64,
            }),
        }
    }

    fn semaphore(&self, origin: &str) -> Arc<Semaphore> {
        let mut table = self.table.lock().expect("origins lock");
        if let Some(s) = table.slots.get(origin) {
            return s.clone();
        }
        if table.slots.len() >= table.sweep_at {
            let per_origin = self.per_origin;
            // Idle: only the table holds it and every slot is free.
            table
                .slots
                .retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < per_origin);
            table.sweep_at = SWEEP_AT.max(2 * table.slots.len());
        }
        let s = Arc::new(Semaphore::new(self.per_origin));
        table.slots.insert(origin.to_owned(), s.clone());
        s
    }

    #[cfg(test)]
    fn known(&self) -> usize {
        self.table.lock().expect("origins lock").slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> hyper::Uri {
        s.parse().expect("test URI")
    }

    /// The origin of a test URL, as [`Target::of`] makes it.
    fn at(s: &str) -> String {
        Target::of(s).origin.to_string()
    }

    #[test]
    fn an_origin_is_scheme_host_and_port_without_user_info() {
        assert_eq!(
            origin(&uri("https://user:pw@example.com/hook?token=x")),
            "https://example.com:443"
        );
        assert_eq!(origin(&uri("http://10.0.0.1/x")), "http://10.0.0.1:80");
        assert_eq!(
            origin(&uri("http://127.0.0.1:9000/a")),
            "http://127.0.0.1:9000"
        );
    }

    /// On tokio's paused clock: the waits are exact and take no real time.
    #[tokio::test(start_paused = true)]
    async fn attempts_to_one_origin_wait_their_turn() {
        let origins = Origins::new(2);
        let far = Instant::now() + Duration::from_secs(60);
        let a = origins.acquire(&at("http://a.test/1"), far).await.unwrap();
        let b = origins.acquire(&at("http://a.test/2"), far).await.unwrap();
        assert!(a.waited.is_zero() && b.waited.is_zero());
        // Another origin is not held up by this one.
        let other = origins.acquire(&at("http://b.test/"), far).await.unwrap();
        assert!(other.waited.is_zero());

        // A third waits until a slot is given back...
        let origins = Arc::new(origins);
        let waiting = {
            let origins = origins.clone();
            tokio::spawn(async move { origins.acquire(&at("http://a.test/3"), far).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        drop(a);
        let c = waiting.await.unwrap().unwrap();
        assert_eq!(c.waited, Duration::from_millis(100));

        // ...and gives up at its deadline, saying why without the path.
        let soon = Instant::now() + Duration::from_millis(200);
        let busy = match origins
            .acquire(&at("http://a.test/secret-path"), soon)
            .await
        {
            Err(busy) => busy,
            Ok(_) => panic!("both slots are held"),
        };
        assert_eq!(busy.waited_ms, 200);
        let text = busy.to_string();
        assert!(text.contains("http://a.test:80") && text.contains("limit (2)"));
        assert!(!text.contains("secret-path"), "{text}");
        drop((b, c));
    }

    #[tokio::test]
    async fn idle_origins_are_forgotten_once_the_table_grows() {
        let origins = Origins::new(1);
        let far = Instant::now() + Duration::from_secs(60);
        let held = origins
            .acquire(&at("http://held.test/"), far)
            .await
            .unwrap();
        for i in 0..SWEEP_AT + 10 {
            let origin = at(&format!("http://h{i}.test/"));
            drop(origins.acquire(&origin, far).await.unwrap());
        }
        // Swept once at SWEEP_AT: only the held origin and those added since stay.
        assert!(origins.known() < 20, "{}", origins.known());
        let again = origins
            .acquire(&at("http://held.test/"), Instant::now())
            .await;
        assert!(again.is_err(), "the held origin kept its slot count");
        drop(held);
    }
}
