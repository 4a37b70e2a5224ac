//! Fault injection that tests and the sandbox switch at runtime. Draws come from a seeded RNG in
//! request order, so a run is reproducible given the seed and the sequence of calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Probabilities are per matching request, each in 0.0..=1.0; their sum should not exceed 1.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// 503 with the error envelope.
    pub error_5xx: f64,
    /// A real 429 with rate-limit headers (another app on the division used the quota, spec §2).
    pub rate_429: f64,
    /// No reply for `ExactSimOptions::timeout_fault_delay` (default 30 s; ends early on shutdown).
    pub timeout: f64,
    /// Added to every matching request before it is handled.
    pub latency: Duration,
    /// POST/PUT only: the change is committed, then the connection breaks while the body is sent.
    pub drop_reply_after_commit: f64,
    pub seed: u64,
    /// Only requests whose path contains this substring are affected. `None`: every `/api/v1/` call
    /// (the token endpoint only when named here, e.g. `Some("oauth2/token")`).
    pub path_contains: Option<String>,
    /// Stop injecting after this many faults (latency excluded); `None`: no limit.
    pub max_faults: Option<u32>,
    /// Only writes (POST/PUT/DELETE) are affected: e.g. a slow create while lookups stay quick.
    pub writes_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    Error5xx,
    RateLimited,
    Timeout,
    DropReply,
}

struct Active {
    plan: FaultPlan,
    rng: StdRng,
    injected: u32,
}

/// Cheap to clone; all clones control the same simulator.
#[derive(Clone, Default)]
pub struct Faults {
    active: Arc<Mutex<Option<Active>>>,
}

pub struct Drawn {
    pub latency: Duration,
    pub action: Option<FaultAction>,
}

impl Faults {
    pub fn set(&self, plan: FaultPlan) {
        let rng = StdRng::seed_from_u64(plan.seed);
        *self.active.lock().expect("faults lock") = Some(Active {
            plan,
            rng,
            injected: 0,
        });
    }

    pub fn clear(&self) {
        *self.active.lock().expect("faults lock") = None;
    }

    /// Faults injected since the plan was set (latency not counted).
    pub fn injected(&self) -> u32 {
        self.active
            .lock()
            .expect("faults lock")
            .as_ref()
            .map_or(0, |a| a.injected)
    }

    pub fn current(&self) -> Option<FaultPlan> {
        self.active
            .lock()
            .expect("faults lock")
            .as_ref()
            .map(|a| a.plan.clone())
    }

    pub(crate) fn draw(&self, path: &str, is_write: bool) -> Drawn {
        let mut guard = self.active.lock().expect("faults lock");
        let none = Drawn {
            latency: Duration::ZERO,
            action: None,
        };
        let Some(a) = guard.as_mut() else {
            return none;
        };
        let applies = match &a.plan.path_contains {
            Some(s) => path.contains(s.as_str()),
            None => path.starts_with("/api/v1/"),
        };
        if !applies || (a.plan.writes_only && !is_write) {
            return none;
        }
        let latency = a.plan.latency;
        if a.plan.max_faults.is_some_and(|m| a.injected >= m) {
            return Drawn {
                latency,
                action: None,
            };
        }
        // One draw per request against cumulative bands keeps the sequence independent of which
        // band fired.
        let r: f64 = a.rng.random();
        let p = &a.plan;
        let bands = [
            (p.timeout, FaultAction::Timeout),
            (p.error_5xx, FaultAction::Error5xx),
            (p.rate_429, FaultAction::RateLimited),
            (p.drop_reply_after_commit, FaultAction::DropReply),
        ];
        let mut edge = 0.0;
        let mut action = None;
        for (probability, act) in bands {
            edge += probability;
            if r < edge {
                action = Some(act);
                break;
            }
        }
        if action == Some(FaultAction::DropReply) && !is_write {
            action = None;
        }
        if action.is_some() {
            a.injected += 1;
        }
        Drawn { latency, action }
    }
}
