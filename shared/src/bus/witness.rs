//! The installation witness kept in the broker: a durable exchange, `{prefix}sync.installed`,
//! declared when the installation first opens its Redis epoch. Redis losing its data does not
//! touch it, so a missing epoch with the exchange present is a loss, not a first start (see
//! `store::claim`). Asked only when the epoch is missing, so a fresh connection per question is
//! fine.

use futures_util::future::BoxFuture;
use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;

use super::conn;
use super::topology::Names;
use crate::config::{BrokerConfig, Config};
use crate::error::Result;
use crate::store::Store;
use crate::store::claim::{ClaimSettings, Claims, InstallationWitness};

/// The claims of a process configured by `cfg`, witnessed by its broker.
pub fn claims(store: Store, cfg: &Config) -> Claims {
    Claims::new(
        store,
        ClaimSettings::from_config(cfg),
        std::sync::Arc::new(BrokerWitness::new(&cfg.broker)),
    )
}

pub struct BrokerWitness {
    url: String,
    exchange: String,
}

impl BrokerWitness {
    pub fn new(cfg: &BrokerConfig) -> Self {
        BrokerWitness {
            url: cfg.url.clone(),
            exchange: Names::new(&cfg.prefix).installed_exchange(),
        }
    }

    async fn declare(&self, passive: bool) -> Result<bool> {
        let (conn, channel) = conn::open_channel(&self.url, "witness").await?;
        let declared = conn::answer(
            "declaring the installation witness",
            channel.exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    passive,
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await;
        conn::close(&conn, "witness").await;
        match declared {
            Ok(()) => Ok(true),
            // A passive declare of a missing exchange closes the channel with 404 NOT_FOUND.
            Err(e) if passive && e.to_string().contains("NOT_FOUND") => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl InstallationWitness for BrokerWitness {
    fn has_run(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.declare(true))
    }

    fn record(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.declare(false).await.map(|_| ()) })
    }
}
