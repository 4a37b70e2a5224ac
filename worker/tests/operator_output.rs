//! The `worker` binary as an operator runs it, with its output piped into another program: stdout
//! carries what the command prints and nothing else, and no stream carries colour codes. Here
//! rather than in the tests crate because only this package's tests can start the binary
//! (`CARGO_BIN_EXE_worker`).

use std::process::Command;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use shared::Flow;
use shared::bus::topology::Names;
use shared::config::Config;

/// A config of this test's own: a prefix nobody else uses, the broker and Redis every test uses.
fn config(prefix: &str) -> String {
    format!(
        "[broker]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\nprefix = \"{prefix}.\"\n\n\
         [redis]\nurl = \"redis://127.0.0.1:6379\"\nprefix = \"{prefix}\"\n"
    )
}

/// Delete the queues and exchanges the command declared for `config`.
async fn delete_topology(config: &Config) {
    let broker = &config.broker;
    let conn = Connection::connect(&broker.url, ConnectionProperties::default())
        .await
        .expect("broker up");
    let channel = conn.create_channel().await.expect("a channel");
    let names = Names::new(&broker.prefix);
    let queues = Flow::ALL
        .iter()
        .map(|f| names.flow_queue(*f))
        .chain([names.dlq()])
        .chain(broker.retry_tiers.iter().map(|t| names.wait_queue(*t)));
    for q in queues {
        let deleted = channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default());
        deleted.await.expect("delete a queue");
    }
    for x in [
        names.events_exchange(),
        names.retry_exchange(),
        names.dead_exchange(),
        names.installed_exchange(),
    ] {
        let deleted = channel.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default());
        deleted.await.expect("delete an exchange");
    }
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_piped_operator_command_prints_its_output_alone_and_no_colour() {
    let prefix = format!("cli-out-{}", uuid::Uuid::new_v4().simple());
    let toml = config(&prefix);
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, &toml).unwrap();

    // Debug logs, so that the command certainly logs something; NO_COLOR unset, so that only
    // the pipe turns colour off.
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["--config", path.to_str().unwrap(), "dlq", "replay", "--all"])
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .env_remove("PRECORO_EXACT_CONFIG")
        .output()
        .expect("run the worker binary");
    delete_topology(&Config::from_toml(&toml, &|_| None).expect("a valid config")).await;
    let _ = std::fs::remove_dir_all(&dir);

    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout, "Replayed 0 of 0 matching dead letter(s) (every dead letter); 0 left in the DLQ.\n",
        "stdout is the command's output alone; the log went to stderr:\n{stderr}"
    );
    assert!(stderr.contains("DEBUG"), "the command logged: {stderr}");
    for (name, text) in [("stdout", stdout.as_str()), ("stderr", &stderr)] {
        assert!(
            !text.contains("\x1b["),
            "{name} carries ANSI escape codes: {text:?}"
        );
    }
}
