//! Waiting until the service is quiet, rather than for a fixed time, before a test says "nothing
//! more happened" (zero-to-production's `dispatch_all_pending_emails`, made to fit a broker):
//!
//! - every watched queue (a stack's flow queues and wait queues) has no message ready;
//! - no consumer holds a delivery it has not yet acked, nacked or re-published;
//! - no publish waits for its confirm (the ingress's, a worker's: retries, the scheduler's jobs);
//! - no simulator webhook is on its way to the ingress (retries and handshakes included);
//! - and all of that holds, with nothing taken or sent meanwhile, for [`STEADY`].
//!
//! Why a steady stretch and not one look: a message can be where no look sees it. A wait queue's
//! TTL dead-letters it back to its flow queue (out of one, not yet in the other), and a delivery the
//! broker has sent sits in the client library before the consumer takes it (no longer ready, not
//! yet held). Each gap lasts milliseconds; the stretch spans many looks, and a message that slipped
//! through a gap and was handled meanwhile still moved a counter, which starts the stretch again.
//!
//! Load makes a settle take longer; only a gap longer than the whole stretch could fool it. It
//! gives up after a generous timeout and names what was still busy.

use std::net::SocketAddr;
use std::time::Duration;

use shared::Flow;
use shared::bus::Publisher;
use shared::bus::consumer::Activity;
use shared::bus::topology::Names;
use shared::config::BrokerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::harness::Inspector;

/// How long everything must stay quiet, looked at every [`LOOK_EVERY`].
pub const STEADY: Duration = Duration::from_millis(300);
pub const LOOK_EVERY: Duration = Duration::from_millis(25);
/// Long enough for the slowest retry chain of a test world (tiers of 0.3, 1 and 2 s) on a loaded
/// machine; reaching it is a failure that names what was busy.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(90);

/// What a settle watches. Cheap to clone; each settle opens its own broker connection.
#[derive(Clone, Default)]
pub struct Quiet {
    queues: Vec<String>,
    watched: Vec<(String, Watched)>,
}

#[derive(Clone)]
enum Watched {
    /// Consumers, or a simulator's webhook sender.
    Work(Activity),
    Publisher(Publisher),
    /// A worker process that serves its counts ([`serve_activity`]).
    Process(SocketAddr),
}

/// One look at everything: what was busy, and the sum of every "taken" counter.
struct Look {
    busy: Vec<String>,
    progress: u64,
}

impl Quiet {
    pub fn new() -> Quiet {
        Quiet::default()
    }

    /// Every flow queue and every wait queue of `broker`'s topology.
    pub fn broker(self, broker: &BrokerConfig) -> Quiet {
        let names = Names::new(&broker.prefix);
        self.queues(Flow::ALL.iter().map(|f| names.flow_queue(*f)))
            .queues(broker.retry_tiers.iter().map(|t| names.wait_queue(*t)))
    }

    pub fn queues(mut self, queues: impl IntoIterator<Item = String>) -> Quiet {
        self.queues.extend(queues);
        self
    }

    pub fn work(mut self, what: &str, activity: Activity) -> Quiet {
        self.watched.push((what.into(), Watched::Work(activity)));
        self
    }

    pub fn publisher(mut self, what: &str, publisher: Publisher) -> Quiet {
        self.watched
            .push((what.into(), Watched::Publisher(publisher)));
        self
    }

    pub fn process(mut self, what: &str, activity_at: SocketAddr) -> Quiet {
        self.watched
            .push((what.into(), Watched::Process(activity_at)));
        self
    }

    /// Wait until everything watched is quiet and stays so for [`STEADY`]; panics, naming what was
    /// busy, after [`SETTLE_WITHIN`].
    pub async fn settle(&self) {
        let insp = Inspector::connect().await;
        let deadline = Instant::now() + SETTLE_WITHIN;
        let mut steady: Option<(Instant, u64)> = None;
        loop {
            let look = self.look(&insp).await;
            if !look.busy.is_empty() {
                steady = None;
            } else {
                match steady {
                    Some((since, progress)) if progress == look.progress => {
                        if since.elapsed() >= STEADY {
                            return;
                        }
                    }
                    _ => steady = Some((Instant::now(), look.progress)),
                }
            }
            if Instant::now() >= deadline {
                let busy = if look.busy.is_empty() {
                    "work kept being taken".to_string()
                } else {
                    look.busy.join("; ")
                };
                panic!("not quiet after {SETTLE_WITHIN:?}: {busy}");
            }
            // The pace of the looks, inside the wait for a steady stretch.
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    async fn look(&self, insp: &Inspector) -> Look {
        let mut look = Look {
            busy: Vec::new(),
            progress: 0,
        };
        for (what, watched) in &self.watched {
            let (busy, taken) = match watched {
                Watched::Work(a) => (a.holding(), a.taken()),
                Watched::Publisher(p) => (p.in_flight(), 0),
                Watched::Process(at) => match read_activity(*at).await {
                    Ok(counts) => counts,
                    Err(e) => {
                        look.busy.push(format!("{what}: no answer at {at} ({e})"));
                        continue;
                    }
                },
            };
            if busy > 0 {
                let doing = match watched {
                    Watched::Publisher(_) => "publishes awaiting their confirm",
                    _ => "in hand",
                };
                look.busy.push(format!("{what}: {busy} {doing}"));
            }
            look.progress += taken;
        }
        for q in &self.queues {
            let ready = insp.depth(q).await;
            if ready > 0 {
                look.busy.push(format!("{q}: {ready} ready"));
            }
        }
        look
    }
}

/// Serve a worker process's counts to [`Quiet::process`]: each connection gets one line, the work
/// in hand (deliveries held plus publishes awaiting their confirm), a space, the deliveries taken.
pub async fn serve_activity(listener: TcpListener, activity: Activity, publisher: Publisher) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        let line = format!(
            "{} {}\n",
            activity.holding() + publisher.in_flight(),
            activity.taken()
        );
        let _ = tcp.write_all(line.as_bytes()).await;
    }
}

async fn read_activity(at: SocketAddr) -> std::io::Result<(usize, u64)> {
    let mut tcp = TcpStream::connect(at).await?;
    let mut line = String::new();
    tcp.read_to_string(&mut line).await?;
    let bad = || std::io::Error::other(format!("not a count line: {line:?}"));
    let (holding, taken) = line.trim().split_once(' ').ok_or_else(bad)?;
    Ok((
        holding.parse().map_err(|_| bad())?,
        taken.parse().map_err(|_| bad())?,
    ))
}
