//! The PostgreSQL role a sandbox mesh's services connect as, dropped with everything it owns
//! (the sandbox's schemas) however the test ends. [`Mesh::stop`](crate::Mesh::stop) drops it
//! after draining the mesh; a test that panics before then (a failed assertion) drops it on
//! the way out, so no run leaves roles and schemas behind on the machine's server.

use palisade_db::{Db, DbConfig, ServiceRole};

pub(crate) struct SandboxRole {
    admin_url: String,
    /// `None` once dropped.
    role: Option<ServiceRole>,
}

impl SandboxRole {
    pub(crate) fn new(admin_url: String, role: ServiceRole) -> SandboxRole {
        SandboxRole {
            admin_url,
            role: Some(role),
        }
    }

    /// The administrator URL the role was made with.
    pub(crate) fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Drops the role and what it owns, once its sessions have ended.
    pub(crate) async fn drop_now(mut self) -> anyhow::Result<()> {
        match self.role.take() {
            Some(role) => drop_role(&self.admin_url, role).await,
            None => Ok(()),
        }
    }
}

impl Drop for SandboxRole {
    fn drop(&mut self) {
        let Some(role) = self.role.take() else {
            return;
        };
        let (admin_url, name) = (self.admin_url.clone(), role.name.clone());
        // Dropped on the test's runtime, which cannot wait on async work: a thread with a
        // runtime of its own does it.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drop_role(&admin_url, role))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("the sandbox's PostgreSQL role {name} could not be dropped");
        }
    }
}

async fn drop_role(admin_url: &str, role: ServiceRole) -> anyhow::Result<()> {
    let admin = Db::connect(&DbConfig::postgres(admin_url, None)).await?;
    role.drop(&admin).await?;
    admin.close().await;
    Ok(())
}
