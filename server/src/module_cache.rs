//! Module images by content hash (docs/DESIGN.md §3.4): a client asks for an image by its
//! SHA-256 before uploading it, and the server keeps what it was sent, in memory
//! (bounded, least recently used first out) and, when configured, on disk, so the
//! next process that loads the same image uploads nothing.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use xpupool_protocol::{CuError, Reply, Request};

use crate::backend::Session;

/// Bytes of images kept in memory at most.
const MEMORY_BYTES: usize = 1 << 30;

/// The server-wide image cache.
pub struct ModuleCache {
    dir: Option<PathBuf>,
    memory: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    images: HashMap<[u8; 32], Arc<Vec<u8>>>,
    order: VecDeque<[u8; 32]>,
    bytes: usize,
}

impl ModuleCache {
    /// A cache in memory, and in `dir` when given (created if missing).
    pub fn new(dir: Option<PathBuf>) -> Self {
        if let Some(dir) = &dir {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), "module cache folder unusable ({e}); caching in memory only");
                return Self {
                    dir: None,
                    memory: Mutex::default(),
                };
            }
        }
        Self {
            dir,
            memory: Mutex::default(),
        }
    }

    fn file(dir: &Path, hash: &[u8; 32]) -> PathBuf {
        dir.join(hex::encode(hash))
    }

    /// The image with this hash, if kept.
    pub fn get(&self, hash: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        if let Some(image) = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .images
            .get(hash)
        {
            return Some(image.clone());
        }
        let bytes = std::fs::read(Self::file(self.dir.as_deref()?, hash)).ok()?;
        // A damaged file is not the image it is named after.
        if Sha256::digest(&bytes).as_slice() != hash {
            return None;
        }
        let image = Arc::new(bytes);
        self.remember(*hash, image.clone());
        Some(image)
    }

    /// Keeps an image a client uploaded; returns its hash.
    pub fn insert(&self, image: &[u8]) -> [u8; 32] {
        let hash: [u8; 32] = Sha256::digest(image).into();
        if self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .images
            .contains_key(&hash)
        {
            return hash;
        }
        if let Some(dir) = &self.dir {
            let path = Self::file(dir, &hash);
            let temporary = path.with_extension(format!("tmp{}", std::process::id()));
            let written =
                std::fs::write(&temporary, image).and_then(|()| std::fs::rename(&temporary, &path));
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), "could not keep a module image on disk: {e}");
            }
        }
        self.remember(hash, Arc::new(image.to_vec()));
        hash
    }

    fn remember(&self, hash: [u8; 32], image: Arc<Vec<u8>>) {
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory.bytes += image.len();
        memory.images.insert(hash, image);
        memory.order.push_back(hash);
        while memory.bytes > MEMORY_BYTES && memory.order.len() > 1 {
            let Some(oldest) = memory.order.pop_front() else {
                break;
            };
            if let Some(gone) = memory.images.remove(&oldest) {
                memory.bytes -= gone.len();
            }
        }
    }
}

/// A session that answers image look-ups by hash from the cache and keeps every
/// image it is sent; everything else goes to the backend's session.
pub(crate) struct CachingSession {
    pub(crate) inner: Box<dyn Session>,
    pub(crate) cache: Arc<ModuleCache>,
}

impl Session for CachingSession {
    fn handle(&mut self, request: Request) -> Result<Reply, CuError> {
        match request {
            Request::ModuleLoadCached { hash } => match self.cache.get(&hash) {
                Some(image) => {
                    tracing::debug!(bytes = image.len(), "module image from the cache");
                    let image = ByteBuf::from(image.as_ref().clone());
                    match self.inner.handle(Request::ModuleLoad { image })? {
                        Reply::ModuleLoad(info) => Ok(Reply::ModuleLoadCached(Some(info))),
                        other => Ok(other),
                    }
                }
                None => Ok(Reply::ModuleLoadCached(None)),
            },
            Request::ModuleLoad { image } => {
                self.cache.insert(&image);
                self.inner.handle(Request::ModuleLoad { image })
            }
            other => self.inner.handle(other),
        }
    }

    fn memcpy_htod_from(&mut self, dst: u64, data: &[u8], stream: u64) -> Result<(), CuError> {
        self.inner.memcpy_htod_from(dst, data, stream)
    }

    fn memcpy_dtoh_into(&mut self, src: u64, out: &mut [u8], stream: u64) -> Result<(), CuError> {
        self.inner.memcpy_dtoh_into(src, out, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_found_by_hash_in_memory_and_on_disk() {
        let dir = std::env::temp_dir().join(format!("xpupool-module-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = ModuleCache::new(Some(dir.clone()));
        let hash = cache.insert(b"an image");
        assert_eq!(cache.get(&hash).unwrap().as_slice(), b"an image");
        assert!(cache.get(&[0; 32]).is_none());
        // A new server process finds it on disk.
        let restarted = ModuleCache::new(Some(dir.clone()));
        assert_eq!(restarted.get(&hash).unwrap().as_slice(), b"an image");
        // A damaged file is ignored.
        std::fs::write(dir.join(hex::encode(hash)), b"tampered").unwrap();
        assert!(ModuleCache::new(Some(dir.clone())).get(&hash).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
