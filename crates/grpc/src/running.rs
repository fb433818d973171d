//! A started component: where it listens and how to stop it gracefully.

use std::{future::Future, net::SocketAddr};

use tokio::{sync::oneshot, task::JoinHandle};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where every component of the mesh listens, as URLs (`http://127.0.0.1:7901`). The scheme
/// is nominal for mTLS ports: the connector always speaks TLS to them.
#[derive(Clone, Debug)]
pub struct MeshAddresses {
    pub identity: String,
    pub compliance: String,
    pub observability: String,
    /// The gateway's public (h2c or TLS) endpoint.
    pub gateway: String,
}

/// A component running on the current runtime.
pub struct Running {
    pub component: &'static str,
    pub local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), BoxError>>,
}

impl Running {
    /// Spawns `serve`, handing it a future that resolves when [`Running::stop`] is called.
    pub fn spawn<F, Fut>(component: &'static str, local_addr: SocketAddr, serve: F) -> Running
    where
        F: FnOnce(ShutdownSignal) -> Fut,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let signal = ShutdownSignal(rx);
        let task = tokio::spawn(serve(signal));
        Running {
            component,
            local_addr,
            shutdown: Some(tx),
            task,
        }
    }

    /// Asks the component to drain and waits until it has.
    pub async fn stop(mut self) -> Result<(), BoxError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join().await
    }

    /// Whether the component's task has ended (by failure, unless it was stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Resolves when the component's task has ended, without consuming the handle (so it can
    /// still be stopped afterwards); yields whether it ended with an error.
    pub async fn wait_ended(&mut self) -> Result<(), String> {
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(join_error) => Err(join_error.to_string()),
        }
    }

    /// Waits until the component ends by itself (an error, or its shutdown signal).
    pub async fn join(self) -> Result<(), BoxError> {
        match self.task.await {
            Ok(result) => result,
            Err(join_error) => Err(Box::new(join_error)),
        }
    }
}

/// Resolves when the component should shut down (also when its `Running` handle is dropped).
pub struct ShutdownSignal(oneshot::Receiver<()>);

impl ShutdownSignal {
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}
