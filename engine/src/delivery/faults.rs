//! Fault injection for the black-box tests, compiled only with the `faults`
//! feature: a webhook whose description names a fault has it happen in each
//! of its attempts, so a test proves what the engine does then without
//! touching any other test's webhooks.

use crate::model::Webhook;

/// Description of a webhook whose every attempt panics inside its task.
pub const PANIC_IN_ATTEMPT: &str = "wasmhook-fault:panic-in-attempt";

/// Called at the start of each attempt.
pub fn attempt(webhook: &Webhook) {
    if webhook.description == PANIC_IN_ATTEMPT {
        panic!("injected fault: {PANIC_IN_ATTEMPT}");
    }
}
