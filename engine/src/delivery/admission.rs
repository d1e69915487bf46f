//! Admission of deliveries, per origin: at most twice `origin_concurrency`
//! attempt tasks for one origin at a time; the rest wait here as plain
//! jobs, in order, until one of that origin's tasks finishes and takes the
//! next one on.
//!
//! Why: a burst to one receiver used to become hundreds of tasks, each
//! shaped, holding a timer, and parked on the origin's slots
//! ([`super::origins`]). Waiting as a job costs a queue entry; on a fast
//! stretch of the bench machine this was worth about a tenth of the
//! throughput to one origin (measured in alternating bench runs). Twice the slots
//! keeps every slot busy while the next attempts shape and record.
//!
//! Owns each origin's count of admitted tasks and its queue of waiting
//! jobs. A fresh delivery is admitted before its task starts; a claimed one
//! (a retry, a lease that ran out) once its task has read its records, since
//! only then is its origin known. What may happen twice: nothing; a job that
//! waits here is never handed out twice, and one dropped (the queue is
//! full, or the engine is stopping) is still leased in the store and goes
//! out when its lease ends.

use prometheus_client::metrics::gauge::Gauge;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Admission for one kind of job (`J`: the deliverer's fresh delivery).
pub struct Admission<J> {
    /// Attempt tasks admitted per origin.
    per_origin: usize,
    /// Jobs waiting, all origins together, at most.
    max_waiting: usize,
    state: Arc<Mutex<State<J>>>,
}

struct State<J> {
    origins: foldhash::HashMap<Arc<str>, Origin<J>>,
    waiting: usize,
    closed: bool,
    /// `waiting`, for `/metrics`.
    gauge: Gauge,
}

impl<J> State<J> {
    fn waiting(&mut self, n: usize) {
        self.waiting = n;
        self.gauge.set(n as i64);
    }
}

struct Origin<J> {
    admitted: usize,
    queue: VecDeque<J>,
}

/// What [`Admission::admit`] did with a job.
pub enum Admitted<J> {
    /// Run it now, holding the ticket until it is done.
    Now(J, Ticket<J>),
    /// It waits for a ticket of its origin to come free.
    Queued,
    /// Too many jobs wait already (or the engine is stopping): not taken.
    Refused(J),
}

/// One admitted task's place at its origin. Given back with
/// [`Ticket::finish`], which may hand it straight to the origin's next job;
/// dropped otherwise (say the task panicked), it is given back as well.
pub struct Ticket<J> {
    origin: Arc<str>,
    state: Arc<Mutex<State<J>>>,
    held: bool,
}

impl<J> Admission<J> {
    /// `per_origin` tasks per origin, `max_waiting` jobs waiting at most;
    /// how many wait is kept in `gauge`.
    pub fn new(per_origin: usize, max_waiting: usize, gauge: Gauge) -> Self {
        Admission {
            per_origin: per_origin.max(1),
            max_waiting,
            state: Arc::new(Mutex::new(State {
                origins: foldhash::HashMap::default(),
                waiting: 0,
                closed: false,
                gauge,
            })),
        }
    }

    /// Admits `job` to `origin` if it has room (or the first of that
    /// origin's waiting jobs, `job` then waiting behind them); queues it
    /// otherwise.
    pub fn admit(&self, origin: Arc<str>, job: J) -> Admitted<J> {
        let mut state = self.state.lock().expect("admission lock");
        if state.closed {
            return Admitted::Refused(job);
        }
        let full = state.waiting >= self.max_waiting;
        let entry = state
            .origins
            .entry(origin.clone())
            .or_insert_with(|| Origin {
                admitted: 0,
                queue: VecDeque::new(),
            });
        if entry.admitted < self.per_origin {
            // Room: the first job waiting goes (only a dropped ticket
            // leaves jobs waiting with room free), and this one waits.
            let job = match entry.queue.pop_front() {
                Some(first) => {
                    entry.queue.push_back(job);
                    first
                }
                None => job,
            };
            entry.admitted += 1;
            return Admitted::Now(
                job,
                Ticket {
                    origin,
                    state: self.state.clone(),
                    held: true,
                },
            );
        }
        if full {
            return Admitted::Refused(job);
        }
        entry.queue.push_back(job);
        let n = state.waiting + 1;
        state.waiting(n);
        Admitted::Queued
    }

    /// Stops handing out: every job still waiting is dropped (and counted
    /// in the answer), and finishing tickets take nothing on.
    pub fn close(&self) -> usize {
        let mut state = self.state.lock().expect("admission lock");
        state.closed = true;
        let dropped = state.waiting;
        state.origins.clear();
        state.waiting(0);
        dropped
    }
}

impl<J> Ticket<J> {
    /// Gives the ticket back: the origin's next waiting job, if any, comes
    /// back with it (still admitted, so the caller runs it next).
    pub fn finish(mut self) -> Option<(J, Ticket<J>)> {
        self.held = false;
        let mut state = self.state.lock().expect("admission lock");
        let state = &mut *state;
        let entry = state.origins.get_mut(&self.origin)?;
        if !state.closed
            && let Some(next) = entry.queue.pop_front()
        {
            let n = state.waiting - 1;
            state.waiting(n);
            let ticket = Ticket {
                origin: self.origin.clone(),
                state: self.state.clone(),
                held: true,
            };
            return Some((next, ticket));
        }
        entry.admitted -= 1;
        if entry.admitted == 0 && entry.queue.is_empty() {
            state.origins.remove(&self.origin);
        }
        None
    }
}

impl<J> Drop for Ticket<J> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Some(entry) = state.origins.get_mut(&self.origin) {
            entry.admitted -= 1;
            // Its waiting jobs stay queued: the origin's next admission
            // lets the first of them go.
            if entry.admitted == 0 && entry.queue.is_empty() {
                state.origins.remove(&self.origin);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now<J>(a: Admitted<J>) -> (J, Ticket<J>) {
        match a {
            Admitted::Now(job, ticket) => (job, ticket),
            Admitted::Queued => panic!("queued"),
            Admitted::Refused(_) => panic!("refused"),
        }
    }

    #[test]
    fn an_origin_admits_up_to_its_limit_and_hands_on_in_order() {
        let admission = Admission::new(2, 10, Gauge::default());
        let (_, a) = now(admission.admit("o1".into(), 1));
        let (_, b) = now(admission.admit("o1".into(), 2));
        assert!(matches!(admission.admit("o1".into(), 3), Admitted::Queued));
        assert!(matches!(admission.admit("o1".into(), 4), Admitted::Queued));
        // Another origin is not held up behind the busy one.
        let (_, c) = now(admission.admit("o2".into(), 5));
        assert_eq!(admission.state.lock().unwrap().gauge.get(), 2);

        let (job, a) = a.finish().expect("3 waits");
        assert_eq!(job, 3);
        let (job, b) = b.finish().expect("4 waits");
        assert_eq!(job, 4);
        assert_eq!(admission.state.lock().unwrap().gauge.get(), 0);
        assert!(a.finish().is_none());
        // A new job is admitted at once when a place is free.
        let (_, d) = now(admission.admit("o1".into(), 6));
        assert!(b.finish().is_none());
        assert!(d.finish().is_none());
        assert!(c.finish().is_none());
        assert!(admission.state.lock().unwrap().origins.is_empty());
    }

    #[test]
    fn a_new_job_waits_behind_those_already_waiting() {
        let admission = Admission::new(1, 10, Gauge::default());
        let (_, a) = now(admission.admit("o".into(), 1));
        assert!(matches!(admission.admit("o".into(), 2), Admitted::Queued));
        // A ticket dropped without finishing (a panicked task) frees its
        // place: the next job to come lets 2 go first, and waits.
        drop(a);
        let (job, b) = now(admission.admit("o".into(), 3));
        assert_eq!(job, 2);
        assert_eq!(admission.state.lock().unwrap().gauge.get(), 1);
        let (job, b) = b.finish().expect("3 waits");
        assert_eq!(job, 3);
        assert!(b.finish().is_none());
        assert_eq!(admission.state.lock().unwrap().gauge.get(), 0);
    }

    #[test]
    fn full_or_closed_refuses_and_closing_drops_the_waiting() {
        let admission = Admission::new(1, 1, Gauge::default());
        let (_, a) = now(admission.admit("o".into(), 1));
        assert!(matches!(admission.admit("o".into(), 2), Admitted::Queued));
        assert!(matches!(
            admission.admit("o".into(), 3),
            Admitted::Refused(3)
        ));
        assert_eq!(admission.close(), 1);
        assert!(a.finish().is_none(), "nothing is handed on once closed");
        assert!(matches!(
            admission.admit("p".into(), 4),
            Admitted::Refused(4)
        ));
    }
}
