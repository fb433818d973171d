//! What every component runs around its gRPC server: a metrics registry, readiness, the admin
//! HTTP port, and gauges for certificates, database pools and the outbox.

use std::time::{Duration, UNIX_EPOCH};

use palisade_db::Db;
use palisade_telemetry::{ComponentMetrics, Readiness, serve_admin};
use palisade_tls::MeshTls;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::{MeshChannel, mesh_channel};

const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// The listeners a component is started with.
pub struct Listeners {
    pub grpc: TcpListener,
    /// The admin HTTP port (`/metrics`, `/healthz`, `/readyz`), if the component exposes one.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    pub fn grpc_only(grpc: TcpListener) -> Listeners {
        Listeners { grpc, admin: None }
    }
}

/// One component's shared telemetry plumbing.
pub struct ComponentKit {
    pub name: &'static str,
    pub tls: MeshTls,
    pub metrics: ComponentMetrics,
    pub readiness: Readiness,
    background: Vec<JoinHandle<()>>,
    admin_stop: Option<oneshot::Sender<()>>,
}

impl ComponentKit {
    /// Registers the component's metrics and starts its admin port (if any).
    pub fn start(name: &'static str, tls: MeshTls, admin: Option<TcpListener>) -> ComponentKit {
        let metrics = ComponentMetrics::new(name);
        // Not ready until the component says so (`watch_readiness`, `ready`): its admin port
        // answers while it is still migrating its database.
        let readiness = Readiness::default();
        readiness.set(Some(crate::readiness::STARTING.to_owned()));
        let mut kit = ComponentKit {
            name,
            tls,
            metrics,
            readiness,
            background: Vec::new(),
            admin_stop: None,
        };
        kit.watch_certificate();
        if let Some(listener) = admin {
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve_admin(
                listener,
                kit.metrics.clone(),
                kit.readiness.clone(),
                async {
                    let _ = stopped.await;
                },
            ));
            kit.admin_stop = Some(stop);
            kit.background.push(task);
        }
        kit
    }

    /// An observed, context-propagating mTLS channel from this component to `component`.
    pub fn channel(&self, uri: &str, component: &str) -> crate::Result<MeshChannel> {
        mesh_channel(uri, &self.tls, component, self.name, &self.metrics)
    }

    /// Keeps pool and outbox gauges of `db` current.
    pub fn watch_database(&mut self, db: Db, has_outbox: bool) {
        let pool_size = self.metrics.gauge(
            "palisade_db_pool_connections",
            "Connections open in the pool",
        );
        let pool_idle = self.metrics.gauge(
            "palisade_db_pool_idle_connections",
            "Idle connections in the pool",
        );
        let depth = self
            .metrics
            .gauge("palisade_outbox_depth", "Messages waiting in the outbox");
        let lag = self.metrics.float_gauge(
            "palisade_outbox_lag_seconds",
            "Age of the oldest message waiting in the outbox (0 when empty)",
        );
        let dead_letters = self.metrics.gauge(
            "palisade_outbox_dead_letters",
            "Messages set aside because their sink rejected them (table outbox_dead_letters)",
        );
        self.background.push(tokio::spawn(async move {
            loop {
                pool_size.set(i64::from(db.pool().size()));
                pool_idle.set(db.pool().num_idle() as i64);
                if has_outbox {
                    if let Ok(waiting) = palisade_db::outbox::depth(&db).await {
                        depth.set(waiting);
                    }
                    if let Ok(count) = palisade_db::outbox::dead_letter_count(&db).await {
                        dead_letters.set(count);
                    }
                    if let Ok(oldest) = palisade_db::outbox::oldest_created_at(&db).await {
                        let age = oldest.map_or(0.0, |micros| {
                            (crate::time::now_micros() - micros).max(0) as f64 / 1e6
                        });
                        lag.set(age);
                    }
                }
                tokio::time::sleep(GAUGE_INTERVAL).await;
            }
        }));
    }

    /// Runs `check` now and then every second; its answer drives gRPC health and `/readyz`.
    /// Call it before the server answers calls: until it returns, `/readyz` says the
    /// component is starting.
    pub async fn watch_readiness<F, Fut>(&mut self, serving: crate::ServingHandle, check: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send,
    {
        let task = crate::watch_readiness(self.name, check, serving, self.readiness.clone()).await;
        self.background.push(task);
    }

    /// A component whose readiness follows nothing (observability): ready once it serves.
    pub fn ready(&self) {
        self.readiness.set(None);
    }

    /// Resolves when `shutdown` does, after marking the component draining for good: the
    /// server is handed this, so `/readyz` stops calling the component ready the moment it
    /// stops taking calls, not when its last call has finished.
    pub fn draining_after<S: std::future::Future<Output = ()>>(
        &self,
        shutdown: S,
    ) -> impl std::future::Future<Output = ()> + use<S> {
        let readiness = self.readiness.clone();
        async move {
            shutdown.await;
            readiness.drain();
        }
    }

    /// Readiness follows `db`: not ready while it cannot answer `SELECT 1`.
    pub async fn watch_database_readiness(&mut self, serving: crate::ServingHandle, db: Db) {
        self.watch_readiness(serving, move || {
            let db = db.clone();
            async move {
                db.ping()
                    .await
                    .map_err(|error| format!("database unreachable: {error}"))
            }
        })
        .await;
    }

    /// Stops the admin port and background tasks, and returns once they have ended, so the
    /// admin port is free again (a component restarted at once binds it anew).
    pub async fn stop(mut self) {
        if let Some(stop) = self.admin_stop.take() {
            let _ = stop.send(());
        }
        let tasks: Vec<_> = self.background.drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    fn watch_certificate(&mut self) {
        let expiry = self.metrics.float_gauge(
            "palisade_certificate_expiry_timestamp_seconds",
            "When the component's mesh certificate expires (Unix time)",
        );
        let tls = self.tls.clone();
        self.background.push(tokio::spawn(async move {
            loop {
                // Re-read each time: certificates rotate without a restart.
                let not_after = tls
                    .not_after()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                expiry.set(not_after.as_secs_f64());
                tokio::time::sleep(GAUGE_INTERVAL).await;
            }
        }));
    }
}

/// A kit dropped without [`ComponentKit::stop`] (its component failed to start) stops its
/// tasks too, so a failed start leaves no admin port bound behind it.
impl Drop for ComponentKit {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}
