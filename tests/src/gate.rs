//! Holding a request inside a simulator until the test lets it go: "worker A is inside the
//! Exact POST", made deterministic. A gate catches the next request whose method and path match,
//! before the simulator acts on it; the test waits for it to arrive, does what it must (flush
//! Redis, send duplicates), then releases it, and the simulator carries on as usual.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

struct Armed {
    method: String,
    path_contains: String,
    caught: AtomicBool,
    held: AtomicUsize,
    arrived: Notify,
    open: watch::Sender<bool>,
}

/// A simulator's gates.
#[derive(Default)]
pub struct Gates {
    armed: Mutex<Vec<Arc<Armed>>>,
}

/// One armed gate. Dropping it opens it, so a failing test never leaves a request hanging.
pub struct Gate(Arc<Armed>);

impl Gates {
    /// Catch the next `method` request whose path contains `path_contains`.
    pub fn hold(&self, method: &str, path_contains: &str) -> Gate {
        let (open, _) = watch::channel(false);
        let armed = Arc::new(Armed {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            caught: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            arrived: Notify::new(),
            open,
        });
        self.armed.lock().unwrap().push(armed.clone());
        Gate(armed)
    }

    /// Called by the simulator before it acts on a request: waits while a gate holds it.
    pub(crate) async fn pass(&self, method: &str, path: &str) {
        let gate = {
            let mut armed = self.armed.lock().unwrap();
            let found = armed.iter().position(|g| {
                g.method.eq_ignore_ascii_case(method)
                    && path.contains(&g.path_contains)
                    && !g.caught.load(Ordering::SeqCst)
            });
            match found {
                Some(i) => {
                    let g = armed.remove(i);
                    g.caught.store(true, Ordering::SeqCst);
                    g
                }
                None => return,
            }
        };
        let mut open = gate.open.subscribe();
        gate.held.fetch_add(1, Ordering::SeqCst);
        gate.arrived.notify_waiters();
        while !*open.borrow_and_update() {
            if open.changed().await.is_err() {
                break;
            }
        }
        gate.held.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    /// Wait until the request is held; false if none came within `within`.
    pub async fn arrived(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.0.arrived.notified();
            if self.0.held.load(Ordering::SeqCst) > 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.0.held.load(Ordering::SeqCst) > 0;
            }
        }
    }

    /// Let the held request (and any later one this gate would have caught) through.
    pub fn release(&self) {
        self.0.open.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.release();
    }
}
