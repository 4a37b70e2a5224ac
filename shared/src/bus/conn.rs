//! Connections to the broker that never wait on it without a bound.
//!
//! lapin has no timeout of its own: a dial to a broker that accepts TCP but never finishes the
//! handshake, a declare on an overloaded node, or any frame on a connection the broker has
//! *blocked* (a memory or disk alarm: lapin then writes nothing at all, not even a close) would
//! wait forever, and a worker or ingress that waits forever looks alive while it does nothing.
//! So every dial, channel, declare and close goes through here: [`open`] dials within
//! [`ANSWER_WITHIN`] and watches the connection for the broker's blocked notice (logged with its
//! reason, counted in the `broker_blocked` gauge), [`answer`] bounds one exchange with the
//! broker, and [`close`] closes within the bound, or only drops a blocked connection.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Event, Queue};

use crate::error::{Error, Result};

/// How long the broker may take to answer one request (a dial, a declare, a close). A healthy
/// broker answers in milliseconds; this only ends waits on one that will not answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// What the broker last said about blocking one connection: `Some(reason)` while it is blocked
/// (RabbitMQ's reason names the alarm, e.g. "low on disk"). Cheap to clone.
#[derive(Clone, Default)]
pub struct Blocked(Arc<Mutex<Option<String>>>);

impl Blocked {
    /// Why the broker blocks this connection, while it does.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().expect("blocked lock poisoned").clone()
    }

    fn set(&self, reason: Option<String>) {
        *self.0.lock().expect("blocked lock poisoned") = reason;
    }
}

/// Dial the broker at `url` for `role` (named in logs and the gauge), within [`ANSWER_WITHIN`].
pub async fn open(url: &str, role: &'static str) -> Result<Connection> {
    open_watched(url, role).await.map(|(conn, _)| conn)
}

/// [`open`], and a channel on the connection.
pub async fn open_channel(url: &str, role: &'static str) -> Result<(Connection, Channel)> {
    let conn = open(url, role).await?;
    let channel = answer("opening a channel", conn.create_channel()).await?;
    Ok((conn, channel))
}

/// What the broker says of `queue` now (its ready messages and consumers), from a passive
/// declare. A missing queue is an error (404 NOT_FOUND), and it closes `channel`.
pub async fn look_at_queue(channel: &Channel, queue: &str) -> Result<Queue> {
    answer(
        "looking at a queue",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}

/// [`open`], and what the broker says about blocking the connection from now on.
pub async fn open_watched(url: &str, role: &'static str) -> Result<(Connection, Blocked)> {
    let conn = answer(
        "connecting",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await?;
    let blocked = Blocked::default();
    let mut events = conn.events_listener();
    let status = conn.status().clone();
    let seen = blocked.clone();
    // Lives as long as the connection's event stream: lapin ends it when the connection goes.
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::ConnectionBlocked(reason) => {
                    crate::telemetry::broker_blocked(role, Some(&reason));
                    seen.set(Some(reason));
                }
                Event::ConnectionUnblocked => {
                    crate::telemetry::broker_blocked(role, None);
                    seen.set(None);
                }
                _ => {}
            }
            if !status.connected() {
                break;
            }
        }
        if seen.reason().is_some() {
            crate::telemetry::broker_blocked(role, None);
        }
    });
    Ok((conn, blocked))
}

/// Await one exchange with the broker (`what`, for the error) for at most [`ANSWER_WITHIN`].
pub async fn answer<T, E>(what: &str, exchange: impl Future<Output = Result<T, E>>) -> Result<T>
where
    Error: From<E>,
{
    match tokio::time::timeout(ANSWER_WITHIN, exchange).await {
        Ok(done) => done.map_err(Error::from),
        Err(_) => Err(Error::Broker(format!(
            "{what}: no answer from the broker within {ANSWER_WITHIN:?}"
        ))),
    }
}

/// Close `conn` (`why` goes to the broker's log) within [`ANSWER_WITHIN`]. A connection the
/// broker blocks is only dropped: lapin writes nothing while blocked, so a close would never leave,
/// and the broker cleans up when the socket goes.
pub async fn close(conn: &Connection, why: &str) {
    if conn.status().blocked() {
        tracing::warn!(
            why,
            "dropping a connection the broker blocks instead of closing it"
        );
        return;
    }
    if let Err(e) = answer("closing", conn.close(200, why.into())).await {
        tracing::warn!(why, error = %e, "the broker did not close the connection; dropping it");
    }
}
