use std::path::PathBuf;

use clap::{Parser, Subcommand};
use shared::config::{Config, ReferenceKind};
use shared::telemetry::LogStream;

/// Consumes sync events and keeps Precoro and Exact Online in step; also the operator's tool.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Defaults to $PRECORO_EXACT_CONFIG.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the consumers and the scheduler (the default).
    Run,
    /// Reference data (Exact VAT codes, payment conditions, GL accounts, cost centers, cost
    /// units, projects → Precoro taxes, payment terms and custom-field options).
    #[command(subcommand)]
    Reference(ReferenceCommand),
    /// Dead letters: messages a flow could not process (a missing mapping, a validation error
    /// from Exact, too many transient failures). Fix the cause, then replay.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Enqueue a flow's work for a past period; running workers do it at their normal pace.
    ///
    /// invoices:  every approved Precoro invoice without an Exact entry whose invoice date lies
    ///            in --from..--to becomes one export (already booked ones are skipped).
    /// payments:  re-read Exact's payment terms and apply payments made since --from (no --to);
    ///            payments already in Precoro are skipped.
    /// suppliers: compare suppliers changed in Precoro since --from (no --to) and every Exact
    ///            supplier account; only differences are written.
    /// reference: a full reconciliation of every kind (no dates).
    ///
    /// Examples:
    ///   worker backfill --tenant acme --flow invoices --from 2026-01-01 --to 2026-01-31
    ///   worker backfill --tenant acme --flow payments --from 2026-01-01
    #[command(verbatim_doc_comment)]
    Backfill {
        /// The company's `id` in the config.
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        flow: shared::Flow,
        /// First day (YYYY-MM-DD, inclusive).
        #[arg(long, value_parser = parse_date)]
        from: Option<chrono::NaiveDate>,
        /// Last day (YYYY-MM-DD, inclusive).
        #[arg(long, value_parser = parse_date)]
        to: Option<chrono::NaiveDate>,
    },
    /// The company's Exact Online connection and webhook subscriptions.
    #[command(subcommand)]
    Exact(ExactCommand),
    /// Pause, resume or run now one flow of a company.
    ///
    /// A paused flow's work waits in the broker: webhooks are still accepted, nothing is lost,
    /// dead-lettered or counted as an attempt, and no scheduled run starts. Resumed, the work
    /// that waited runs within seconds (one shortest retry tier). Both are written to the
    /// company's sync log with --by.
    ///
    /// Examples:
    ///   worker flow pause  --tenant acme --flow invoices
    ///   worker flow resume --tenant acme --flow invoices
    ///   worker flow run    --tenant acme --flow payments    enqueue its scheduled jobs now
    #[command(verbatim_doc_comment)]
    Flow {
        #[arg(value_enum)]
        action: FlowAction,
        /// The company's `id` in the config.
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        flow: shared::Flow,
        /// Who does it, for the sync log (default: $USER).
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
    /// Per company: Exact connection and token expiry, API budget left today, cursors and last
    /// successful run per flow, dead letters; queue depths. Reads only (calls no API).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A company's sync log: each invoice, payment and supplier event's outcome (booked, synced,
    /// skipped, held, retried, failed), newest first, kept worker.sync_log_retention (30 days).
    ///
    /// Examples:
    ///   worker log --tenant acme
    ///   worker log --tenant acme --invoice 1042          an invoice (number or supplier's number)
    ///   worker log --tenant acme --status held --since 1d
    #[command(verbatim_doc_comment)]
    Log {
        /// The company's `id` in the config.
        #[arg(long)]
        tenant: String,
        /// Only this invoice: its Precoro number or the supplier's invoice number (its payments
        /// too).
        #[arg(long)]
        invoice: Option<String>,
        /// Only this record, of any kind (e.g. a supplier as `precoro 12` or `exact <guid>`).
        #[arg(long, conflicts_with = "invoice")]
        record: Option<String>,
        /// Only this outcome.
        #[arg(long, value_enum)]
        status: Option<shared::store::records::Status>,
        /// Only this flow.
        #[arg(long, value_enum)]
        flow: Option<shared::Flow>,
        /// Only entries since then: an age (2h, 3d), a date (2026-01-31) or an RFC 3339 time.
        #[arg(long, value_parser = parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Records held because of their data (a missing mapping, a refusal by Exact), with the
    /// message finance sees in Precoro. They sync by themselves once fixed.
    Held {
        /// Only this company.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print new random secrets (256 bits, URL-safe), one a line: for a company's Precoro
    /// webhook_token or ingress.oauth_state_secret. Needs no config.
    Secret {
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Operator accounts of the web console.
    #[command(subcommand)]
    Operator(OperatorCommand),
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Read a password (a prompt, or one line on stdin) and print its argon2 hash for
    /// `[[console.operators]] password_hash`. Needs no config.
    Hash,
}

/// Which dead letters a command applies to.
#[derive(clap::Args)]
struct DlqFilter {
    /// Only this company (its `id` in the config).
    #[arg(long)]
    tenant: Option<String>,
    /// Only this flow.
    #[arg(long, value_enum)]
    flow: Option<shared::Flow>,
    /// Only this error class: permanent, transient, busy, rate_limited or paused.
    #[arg(long = "class", value_enum)]
    error_class: Option<shared::RetryClass>,
    /// Only those that last failed since then: an age (2h, 3d), a date (2026-01-31) or an
    /// RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl DlqFilter {
    fn selection(self, id: Option<String>) -> worker::cli::dlq::Selection {
        worker::cli::dlq::Selection {
            id,
            tenant: self.tenant,
            flow: self.flow,
            error_class: self.error_class,
            since: self.since,
        }
    }
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters (id, company, flow, class, attempts, last failure, reason).
    ///
    /// Examples:
    ///   worker dlq list
    ///   worker dlq list --tenant acme --flow invoices --since 1d
    ///   worker dlq list --class permanent --json
    #[command(verbatim_doc_comment)]
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full: reason, headers and payload.
    Show {
        /// The id from `worker dlq list`.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their flow for another try (after fixing the cause).
    ///
    /// Each is re-published with a fresh replay nonce (so deduplication lets it through) and
    /// removed from the DLQ only once the broker confirmed the re-publish: an interrupted
    /// replay loses nothing. Flows never book twice, so replaying a done one is harmless.
    ///
    /// Examples:
    ///   worker dlq replay 5f0c…                    one
    ///   worker dlq replay --tenant acme --flow invoices --dry-run
    ///   worker dlq replay --all
    #[command(verbatim_doc_comment)]
    Replay {
        /// One dead letter by id.
        id: Option<String>,
        #[command(flatten)]
        filter: DlqFilter,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Count what would be replayed; move nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters for good (asks first unless --yes).
    ///
    /// Examples:
    ///   worker dlq purge 5f0c…
    ///   worker dlq purge --tenant acme --class permanent --yes
    #[command(verbatim_doc_comment)]
    Purge {
        /// One dead letter by id.
        id: Option<String>,
        #[command(flatten)]
        filter: DlqFilter,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FlowAction {
    /// Hold the flow's work in the broker.
    Pause,
    /// Let the held work run.
    Resume,
    /// Enqueue the flow's scheduled jobs now.
    Run,
}

#[derive(Subcommand)]
enum ExactCommand {
    /// Print the link that connects a company to Exact Online (OAuth consent).
    ///
    /// A finance user of the company opens it, logs in to Exact and consents; Exact sends the
    /// browser back to the ingress (tenants.exact.redirect_uri), which stores the tokens if the
    /// account reaches the configured division. The link works once and expires after 15
    /// minutes; it is signed with ingress.oauth_state_secret, which must be the same here and in
    /// the ingress. Run it again to repair a broken connection.
    Connect {
        /// The company's `id` in the config.
        #[arg(long)]
        tenant: String,
    },
    /// Create the Exact webhook subscriptions the company's enabled flows need.
    ///
    /// Callbacks go to {ingress.public_url}/webhooks/exact, which must be reachable by Exact
    /// (HTTPS, on the redirect URI's domain) and running. Safe to run again: topics already
    /// subscribed are left alone.
    Subscribe {
        /// The company's `id` in the config.
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum ReferenceCommand {
    /// Enqueue a sync now; a running worker does it (see its log for what changed).
    ///
    /// Without --full, only what changed in Exact since the last sync is looked up in Precoro
    /// (GL accounts and projects by their Exact sync cursor). With --full, every Exact row is
    /// compared with every Precoro record: this also repairs records edited by hand in Precoro
    /// and disables those whose Exact row is gone. Records are never deleted, only disabled.
    ///
    /// Examples:
    ///   worker reference sync --tenant acme                     every configured kind
    ///   worker reference sync --tenant acme --kind gl_accounts  one kind
    ///   worker reference sync --tenant acme --full              full reconciliation
    #[command(verbatim_doc_comment)]
    Sync {
        /// The company's `id` in the config.
        #[arg(long)]
        tenant: String,
        /// One kind: taxes, payment_terms, gl_accounts, cost_centers, cost_units or projects
        /// (default: every kind in the company's flows.reference.kinds).
        #[arg(long, value_parser = parse_kind)]
        kind: Option<ReferenceKind>,
        /// Full reconciliation instead of the incremental sync.
        #[arg(long)]
        full: bool,
    },
}

fn parse_date(s: &str) -> Result<chrono::NaiveDate, String> {
    worker::cli::parse_date(s)
}

fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    worker::cli::parse_when(s, chrono::Utc::now())
}

fn parse_kind(s: &str) -> Result<ReferenceKind, String> {
    ReferenceKind::parse(s).ok_or_else(|| {
        format!(
            "unknown kind '{s}' (one of: {})",
            ReferenceKind::ALL.map(|k| k.as_str()).join(", ")
        )
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let command = args.command.unwrap_or(Command::Run);
    if let Command::Secret { count } = command {
        for _ in 0..count {
            println!("{}", shared::config::new_secret());
        }
        return Ok(());
    }
    if let Command::Operator(OperatorCommand::Hash) = command {
        use std::io::IsTerminal;
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprint!("Password for the console operator (at least 12 characters): ");
        }
        worker::cli::operator::hash(&mut stdin.lock(), &mut std::io::stdout())?;
        return Ok(());
    }
    let config = Config::load(args.config.as_deref())?;
    // The service's log is its output; an operator command's output is what it prints, and its
    // log goes beside it, so that a pipe gets the output alone.
    let logs = match command {
        Command::Run => LogStream::Stdout,
        _ => LogStream::Stderr,
    };
    shared::telemetry::init_logs_to(&config.telemetry, logs);
    match command {
        // Printed above, before any config is read.
        Command::Secret { .. } | Command::Operator(_) => {}
        Command::Run => {
            let worker = worker::Worker::start(config, worker::Parts::default()).await?;
            tracing::info!("worker running");
            worker.run_until(shutdown_signal()).await;
            tracing::info!("worker stopped");
        }
        Command::Reference(ReferenceCommand::Sync { tenant, kind, full }) => {
            let env = worker::flows::reference::enqueue_sync(&config, &tenant, kind, full).await?;
            println!(
                "enqueued {} for company '{tenant}' (event {})",
                env.routing_key(),
                env.id
            );
        }
        Command::Dlq(cmd) => dlq(&config, cmd).await?,
        Command::Backfill {
            tenant,
            flow,
            from,
            to,
        } => {
            let req = worker::cli::backfill::Request {
                tenant,
                flow,
                from,
                to,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            worker::cli::backfill::run(&config, &req, &mut std::io::stdout()).await?;
        }
        Command::Exact(ExactCommand::Connect { tenant }) => {
            worker::cli::exact::connect(&config, &tenant, &mut std::io::stdout()).await?;
        }
        Command::Exact(ExactCommand::Subscribe { tenant }) => {
            worker::cli::exact::subscribe(&config, &tenant, &mut std::io::stdout()).await?;
        }
        Command::Flow {
            action,
            tenant,
            flow,
            by,
        } => {
            use worker::cli::flow::Action;
            let action = match action {
                FlowAction::Pause => Action::Pause,
                FlowAction::Resume => Action::Resume,
                FlowAction::Run => Action::Run,
            };
            worker::cli::flow::flow(&config, &tenant, flow, action, &by, &mut std::io::stdout())
                .await?;
        }
        Command::Log {
            tenant,
            invoice,
            record,
            status,
            flow,
            since,
            limit,
            json,
        } => {
            let filter = shared::store::records::LogFilter {
                record: invoice.or(record),
                flow,
                status,
                since,
                kind: None,
                text: None,
            };
            let q = worker::cli::log::Query {
                tenant,
                filter,
                limit,
                json,
            };
            worker::cli::log::log(&config, &q, &mut std::io::stdout()).await?;
        }
        Command::Held { tenant, json } => {
            worker::cli::log::held(&config, tenant.as_deref(), json, &mut std::io::stdout())
                .await?;
        }
        Command::Status { json } => {
            worker::cli::status::status(&config, json, &mut std::io::stdout()).await?;
        }
    }
    Ok(())
}

async fn dlq(config: &Config, cmd: DlqCommand) -> anyhow::Result<()> {
    use worker::cli::dlq;
    let out = &mut std::io::stdout();
    match cmd {
        DlqCommand::List { filter, json } => {
            dlq::list(config, &filter.selection(None), json, out).await?;
        }
        DlqCommand::Show { id, json } => {
            dlq::show(config, &id, json, out).await?;
        }
        DlqCommand::Replay {
            id,
            filter,
            all,
            dry_run,
        } => {
            dlq::replay(config, &filter.selection(id), all, dry_run, out).await?;
        }
        DlqCommand::Purge {
            id,
            filter,
            all,
            yes,
        } => {
            dlq::purge(
                config,
                &filter.selection(id),
                all,
                yes,
                &mut std::io::stdin().lock(),
                out,
            )
            .await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
