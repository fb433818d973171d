//! Values built from files and rebuilt when the files change: the mesh's own material
//! ([`crate::MeshTls`]) and any other certificate a component serves (the gateway's public one).

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};

/// A value loaded from a set of files and loaded again when any of them changes. Clones share
/// it; readers get the current value without locking, so new connections pick up a reload while
/// open ones keep what they started with.
pub struct Reloading<T> {
    current: Arc<ArcSwap<T>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Reloading {
            current: self.current.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads the value now (an error stops here, as a bad file at start should) and starts a
    /// task that polls the metadata of `files` every `interval` and calls `load` again when it
    /// changed. `what` names the material in logs. Requires a tokio runtime.
    ///
    /// The task holds only a weak reference, so it stops once every clone is dropped.
    pub fn start<E, F>(
        what: &'static str,
        files: Vec<PathBuf>,
        interval: Duration,
        load: F,
    ) -> Result<Reloading<T>, E>
    where
        E: Display + Send + 'static,
        F: Fn() -> Result<T, E> + Send + 'static,
    {
        // Stamp before reading, so a change racing with the read is seen by the first poll.
        let stamp = Stamp::read(&files);
        let current = Arc::new(ArcSwap::from_pointee(load()?));
        let watcher = Watcher {
            what,
            files,
            interval,
            load,
        };
        tokio::spawn(watcher.run(Arc::downgrade(&current), stamp));
        Ok(Reloading { current })
    }

    /// The current value.
    pub fn load(&self) -> Guard<Arc<T>> {
        self.current.load()
    }

    /// The current value, to keep beyond a short borrow.
    pub fn load_full(&self) -> Arc<T> {
        self.current.load_full()
    }
}

/// What the watcher compares between polls. The inode is part of it because atomic replacement
/// (rename, Kubernetes' symlink swap) can keep mtime and size within the clock's granularity.
#[derive(Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64, u64)>>);

impl Stamp {
    fn read(files: &[PathBuf]) -> Stamp {
        let stamp = |path: &Path| {
            let meta = std::fs::metadata(path).ok()?;
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let ino = 0;
            Some((meta.modified().ok()?, meta.len(), ino))
        };
        Stamp(files.iter().map(|path| stamp(path)).collect())
    }
}

struct Watcher<F> {
    what: &'static str,
    files: Vec<PathBuf>,
    interval: Duration,
    load: F,
}

impl<F> Watcher<F> {
    /// Polls the files and swaps in a new value when they change. On failure the previous
    /// value stays; the stamp is not advanced so the next poll retries (a key and certificate
    /// replaced one after the other can be read mid-change), but each broken state is reported
    /// only once.
    ///
    /// File access is synchronous: a few small files, read only when their metadata changed.
    async fn run<T, E>(self, current: Weak<ArcSwap<T>>, mut stamp: Stamp)
    where
        E: Display,
        F: Fn() -> Result<T, E>,
    {
        let files = || {
            self.files
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut reported: Option<Stamp> = None;
        loop {
            tokio::time::sleep(self.interval).await;
            let Some(current) = current.upgrade() else {
                return;
            };
            let now = Stamp::read(&self.files);
            if now == stamp {
                continue;
            }
            match (self.load)() {
                Ok(value) => {
                    tracing::info!(material = self.what, files = %files(), "reloaded tls material");
                    current.store(Arc::new(value));
                    stamp = now;
                    reported = None;
                }
                Err(error) if reported.as_ref() != Some(&now) => {
                    tracing::warn!(
                        %error,
                        material = self.what,
                        files = %files(),
                        "failed to reload tls material, keeping the previous one"
                    );
                    reported = Some(now);
                }
                Err(_) => {}
            }
        }
    }
}
