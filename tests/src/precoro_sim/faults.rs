//! Fault injection for the Precoro simulator: server errors, spurious 429s, hangs, latency and the
//! nastiest one for exactly-once effects, a reply dropped after the write was committed.
//!
//! Decisions come from a seeded RNG drawn once per authenticated request, in arrival order, so a
//! test that sends the same sequence of requests sees the same faults.

use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to inject. Probabilities are 0.0..=1.0 per request; `1.0` means "every matching request".
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Answer 500/503 without touching state.
    pub error_5xx: f64,
    /// Answer 429 ("Per second limiter") without touching state.
    pub rate_429: f64,
    /// Hang for `hang` without touching state, then answer 504 (the client should have timed out).
    pub timeout: f64,
    /// How long a `timeout` fault hangs.
    pub hang: Duration,
    /// Added to every matching request before anything else.
    pub latency: Duration,
    /// Run the request (commit the write), then abort the connection mid-body so the client sees a
    /// transport failure and cannot know the write happened.
    pub drop_reply_after_commit: f64,
    pub seed: u64,
    /// Only requests whose path contains this are eligible (e.g. "/payments").
    pub path_contains: Option<String>,
    /// Only requests with this method are eligible (e.g. "POST").
    pub method: Option<String>,
    /// Stop injecting after this many faults (latency does not count).
    pub max_faults: Option<u32>,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            error_5xx: 0.0,
            rate_429: 0.0,
            timeout: 0.0,
            hang: Duration::from_secs(30),
            latency: Duration::ZERO,
            drop_reply_after_commit: 0.0,
            seed: 1,
            path_contains: None,
            method: None,
            max_faults: None,
        }
    }
}

/// The fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Error5xx(u16),
    RateLimited,
    Timeout(Duration),
    DropAfterCommit,
}

struct Active {
    plan: FaultPlan,
    rng: StdRng,
    injected: u32,
}

/// The simulator's fault switchboard (`sim.faults()`).
#[derive(Default)]
pub struct Faults {
    active: Mutex<Option<Active>>,
    total_injected: Mutex<u32>,
}

impl Faults {
    pub fn set(&self, plan: FaultPlan) {
        let rng = StdRng::seed_from_u64(plan.seed);
        *self.active.lock().unwrap() = Some(Active {
            plan,
            rng,
            injected: 0,
        });
    }

    pub fn clear(&self) {
        *self.active.lock().unwrap() = None;
    }

    /// Faults injected since the simulator started (latency not counted).
    pub fn injected(&self) -> u32 {
        *self.total_injected.lock().unwrap()
    }

    /// Latency for this request, if a plan matches it.
    pub(crate) fn latency(&self, method: &str, path: &str) -> Duration {
        let guard = self.active.lock().unwrap();
        match guard.as_ref() {
            Some(a) if matches(&a.plan, method, path) => a.plan.latency,
            _ => Duration::ZERO,
        }
    }

    /// Draw the fault for one request.
    pub(crate) fn decide(&self, method: &str, path: &str) -> Fault {
        let mut guard = self.active.lock().unwrap();
        let Some(a) = guard.as_mut() else {
            return Fault::None;
        };
        if !matches(&a.plan, method, path) {
            return Fault::None;
        }
        if a.plan.max_faults.is_some_and(|m| a.injected >= m) {
            return Fault::None;
        }
        // One draw per request keeps the sequence deterministic whatever the probabilities are.
        let roll: f64 = a.rng.random();
        let status = if a.rng.random::<bool>() { 500 } else { 503 };
        let p = &a.plan;
        let mut edge = 0.0;
        let mut pick = |prob: f64| {
            edge += prob;
            roll < edge
        };
        let fault = if pick(p.error_5xx) {
            Fault::Error5xx(status)
        } else if pick(p.rate_429) {
            Fault::RateLimited
        } else if pick(p.timeout) {
            Fault::Timeout(p.hang)
        } else if pick(p.drop_reply_after_commit) {
            Fault::DropAfterCommit
        } else {
            Fault::None
        };
        if fault != Fault::None {
            a.injected += 1;
            *self.total_injected.lock().unwrap() += 1;
        }
        fault
    }
}

fn matches(plan: &FaultPlan, method: &str, path: &str) -> bool {
    plan.path_contains
        .as_deref()
        .is_none_or(|p| path.contains(p))
        && plan
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
}
