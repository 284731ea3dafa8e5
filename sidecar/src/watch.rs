//! Watches the configuration file: a cheap `stat` every `discovery.config_poll_ms` (200 ms by
//! default) and a full reload every two seconds (credential and key files can change without the
//! YAML changing). Polling works the same for in-place writes, editors' rename dance and Kubernetes
//! ConfigMap symlink swaps, and needs no platform notification API.
//!
//! A file that does not load is rejected with one clear log line; the last good settings stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::sleep;

use crate::engine::ConfigEvent;
use crate::settings::{self, Settings};

const FULL_RELOAD: Duration = Duration::from_secs(2);

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

pub async fn watch(path: PathBuf, mut current: Arc<Settings>, events: mpsc::Sender<ConfigEvent>) {
    let mut last_stamp = stamp(&path);
    let mut last_full = tokio::time::Instant::now();
    let mut last_error: Option<String> = None;
    loop {
        sleep(current.config_poll).await;
        let now_stamp = stamp(&path);
        let full_due = last_full.elapsed() >= FULL_RELOAD;
        if now_stamp == last_stamp && !full_due {
            continue;
        }
        last_full = tokio::time::Instant::now();
        last_stamp = now_stamp;
        let loaded = match settings::load(&path, settings::KeyFile::Create) {
            Err(e) => {
                // Maybe caught mid-write: if the file is still changing, look again shortly.
                sleep(Duration::from_millis(50)).await;
                let again = stamp(&path);
                if again != last_stamp {
                    last_stamp = again;
                    settings::load(&path, settings::KeyFile::Create)
                } else {
                    Err(e)
                }
            }
            ok => ok,
        };
        match loaded {
            Ok(settings) => {
                let recovered = last_error.take().is_some();
                if recovered || settings != *current {
                    if recovered {
                        tracing::info!("configuration {} is valid again", path.display());
                    }
                    current = Arc::new(settings);
                    if events
                        .send(ConfigEvent::Loaded(current.clone()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(message) => {
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(
                        "configuration edit rejected, the last good configuration stays in force: {message}"
                    );
                    last_error = Some(message.clone());
                    if events.send(ConfigEvent::Rejected(message)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
