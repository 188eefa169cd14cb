//! Start-up and shutdown: the threads, in order, and how they are joined.

use crate::config::Config;
use crate::http::{HttpServer, Shared};
use crate::metrics::Metrics;
use crate::orders::Orders;
use crate::products::{self, Catalog, RefresherHandle};
use crate::relay::{self, RelayHandle, RelaySettings};
use crate::store::{self, FillHandle, WriterHandle};
use crossbeam_channel::bounded;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// At most this long for the writer to commit what is queued when the relay is left behind.
const WRITER_FLUSH: Duration = Duration::from_secs(5);
/// At most this long for the catalog refresher to finish the page it is reading.
const REFRESHER_STOP: Duration = Duration::from_secs(3);
/// At most this long for the lines' fill to finish its step.
const FILL_STOP: Duration = Duration::from_secs(3);

/// The running service.
pub struct App {
    address: SocketAddr,
    http: HttpServer,
    relay: RelayHandle,
    /// `None` with `CATALOG_REFRESH=0`.
    refresher: Option<RefresherHandle>,
    lines_fill: FillHandle,
    writer: WriterHandle,
    writer_threads: Vec<JoinHandle<()>>,
}

impl App {
    /// Migrates the database, starts the writer, binds the port (0 picks one), starts
    /// the HTTP workers, the relay, the catalog refresher (its first refresh runs in the
    /// background) and the lines fill. When this returns, requests are being served.
    pub fn build(config: &Config) -> Result<App, String> {
        let opened = store::open(&config.database, &config.postgres)?;
        for m in &opened.applied {
            log::info!("applied migration {m}");
        }
        let metrics = Arc::new(Metrics::default());
        let (wake_tx, wake_rx) = bounded(1);
        let (writer, writer_threads) =
            store::spawn_writer(opened.engines, wake_tx).map_err(|e| e.to_string())?;
        let open_reads = opened.open_reads;
        let join_get = opened.join_get;

        let listener = TcpListener::bind((config.host, config.port))
            .map_err(|e| format!("cannot listen on {}:{}: {e}", config.host, config.port))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let catalog = Catalog::new(config, metrics.clone());
        let shared = Arc::new(Shared {
            orders: Orders::new(writer.clone(), &config.store_id),
            writer: writer.clone(),
            catalog: catalog.clone(),
            metrics: metrics.clone(),
            open_reads: open_reads.clone(),
            join_get,
            admin_token: config.admin_token.clone(),
            gateway_token: config.gateway_token.clone(),
        });
        let http = HttpServer::start(
            listener,
            shared,
            config.http_threads,
            config.http_write_threads,
            config.max_connections,
        )
        .map_err(|e| format!("cannot start HTTP workers: {e}"))?;

        let relay_reader = open_reads().map_err(|e| e.to_string())?;
        let relay = relay::spawn(
            RelaySettings {
                rabbit: config.rabbitmq.clone(),
                retention: config.outbox_retention,
            },
            relay_reader,
            writer.clone(),
            wake_rx,
            metrics,
        )
        .map_err(|e| format!("cannot start the relay: {e}"))?;
        let refresher = if config.catalog_refresh.is_zero() {
            None
        } else {
            let refresher =
                products::spawn_refresher(catalog, writer.clone(), config.catalog_refresh)
                    .map_err(|e| format!("cannot start the catalog refresher: {e}"))?;
            Some(refresher)
        };
        let lines_fill = store::spawn_lines_fill(writer.clone())
            .map_err(|e| format!("cannot start the lines fill: {e}"))?;
        Ok(App {
            address,
            http,
            relay,
            refresher,
            lines_fill,
            writer,
            writer_threads,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops taking connections, the catalog refresher and the lines fill; gives the relay a last drain while the workers answer
    /// what open connections still send; lets the writer commit what it holds; joins
    /// every thread. Bounded whatever the broker does: the relay gets `relay::STOP_WITHIN`.
    pub fn shutdown(self) {
        // Workers keep answering (open connections, one request each) while the relay
        // makes its last pass; what they commit meanwhile waits in the outbox.
        self.http.stop_accepting();
        let refresher_stopped = self.refresher.is_none_or(|r| r.shutdown(REFRESHER_STOP));
        let fill_stopped = self.lines_fill.shutdown(FILL_STOP);
        let relay_stopped = self.relay.shutdown(relay::STOP_WITHIN);
        self.http.shutdown();
        if relay_stopped && refresher_stopped && fill_stopped {
            drop(self.writer);
            for thread in self.writer_threads {
                let _ = thread.join();
            }
        } else {
            // A thread left behind holds a writer handle, so the writer would wait for it.
            // A ping is answered once everything queued before it is committed.
            if let Err(e) = self.writer.ping(WRITER_FLUSH) {
                log::error!("writer at shutdown: {e}");
            }
        }
    }
}
