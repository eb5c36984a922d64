//! Module images by content hash (docs/DESIGN.md §3.4): a client asks for an image by
//! its SHA-256 before uploading it, and the server keeps what it was sent, in memory
//! and, when configured, on disk, so the next process that loads the same image
//! uploads nothing.
//!
//! What is kept, and who may use it:
//! - only images a backend has loaded (validated) are kept, never one it refused;
//! - memory and disk are each bounded in bytes, the least recently used image
//!   leaving first;
//! - the folder and its files are its owner's alone (0700, 0600);
//! - a tenant loads an image by its hash only once it, or another session of the
//!   same tenant, has sent the image's bytes: a hash alone tells nothing about what
//!   other tenants run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use xpupool_protocol::{CuError, Reply, Request};

use crate::backend::Session;

/// Bytes of images kept in memory at most, by default.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;
/// Bytes of images kept on disk at most, by default.
pub const DEFAULT_DISK_BYTES: u64 = 2 << 30;

type Hash = [u8; 32];

/// Images by hash, least recently used first out past a byte limit.
struct Lru<V> {
    entries: HashMap<Hash, (V, u64, u64)>,
    by_use: BTreeMap<u64, Hash>,
    bytes: u64,
    limit: u64,
    clock: u64,
}

impl<V> Lru<V> {
    fn new(limit: u64) -> Self {
        Self {
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            bytes: 0,
            limit,
            clock: 0,
        }
    }

    /// Marks `hash` as just used; its value, if kept.
    fn touch(&mut self, hash: &Hash) -> Option<&V> {
        self.clock += 1;
        let (value, _, used) = self.entries.get_mut(hash)?;
        self.by_use.remove(used);
        *used = self.clock;
        self.by_use.insert(self.clock, *hash);
        Some(value)
    }

    /// Keeps `value` of `bytes` under `hash` (in place of what it had); returns
    /// the hashes that had to leave to make room, possibly this one.
    fn insert(&mut self, hash: Hash, value: V, bytes: u64) -> Vec<Hash> {
        self.remove(&hash);
        let mut gone = Vec::new();
        self.clock += 1;
        self.entries.insert(hash, (value, bytes, self.clock));
        self.by_use.insert(self.clock, hash);
        self.bytes += bytes;
        while self.bytes > self.limit {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((_, bytes, _)) = self.entries.remove(&oldest) {
                self.bytes -= bytes;
                gone.push(oldest);
            }
        }
        gone
    }

    fn remove(&mut self, hash: &Hash) -> Option<V> {
        let (value, bytes, used) = self.entries.remove(hash)?;
        self.by_use.remove(&used);
        self.bytes -= bytes;
        Some(value)
    }

    fn contains(&self, hash: &Hash) -> bool {
        self.entries.contains_key(hash)
    }
}

struct State {
    memory: Lru<Arc<Vec<u8>>>,
    /// Images in the folder (their bytes are read back on use).
    disk: Lru<()>,
    /// Per tenant, the images it has presented that are still kept.
    presented: HashMap<String, HashSet<Hash>>,
}

/// The server-wide image cache.
pub struct ModuleCache {
    dir: Option<PathBuf>,
    state: Mutex<State>,
}

/// Makes `dir` (and its parents) and keeps it its owner's alone.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn hash_of(name: &str) -> Option<Hash> {
    let bytes = hex::decode(name).ok()?;
    bytes.try_into().ok()
}

/// Where the marks of one tenant's presented images are kept: named by a hash of
/// the tenant's name, so no name can reach outside the folder.
fn tenant_dir(dir: &Path, tenant: &str) -> PathBuf {
    let digest = Sha256::digest(tenant.as_bytes());
    dir.join("tenants").join(hex::encode(&digest[..16]))
}

impl ModuleCache {
    /// A cache in memory, and in `dir` when given (created if missing), with the
    /// default bounds.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self::with_limits(dir, DEFAULT_MEMORY_BYTES, DEFAULT_DISK_BYTES)
    }

    /// A cache holding at most `memory` bytes of images in memory and `disk` bytes
    /// in `dir`. Images already in `dir` are taken in (oldest first out), and its
    /// files made private if an older server left them readable.
    pub fn with_limits(dir: Option<PathBuf>, memory: u64, disk: u64) -> Self {
        let mut state = State {
            memory: Lru::new(memory),
            disk: Lru::new(disk),
            presented: HashMap::new(),
        };
        let dir = dir.filter(|dir| match private_dir(dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "module cache folder unusable ({e}); caching in memory only");
                false
            }
        });
        if let Some(dir) = &dir {
            Self::scan(dir, &mut state);
        }
        Self {
            dir,
            state: Mutex::new(state),
        }
    }

    /// Takes in what an earlier server kept in `dir`.
    fn scan(dir: &Path, state: &mut State) {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Some(hash) = entry.file_name().to_str().and_then(hash_of) else {
                // A temporary file of a write that never finished.
                if entry.file_name().to_string_lossy().contains(".tmp") {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            found.push((meta.modified().ok(), hash, meta.len()));
        }
        found.sort();
        for (_, hash, bytes) in found {
            for gone in state.disk.insert(hash, (), bytes) {
                let _ = std::fs::remove_file(dir.join(hex::encode(gone)));
            }
        }
        let tenants = dir.join("tenants");
        let _ = std::fs::set_permissions(&tenants, std::fs::Permissions::from_mode(0o700));
        for tenant in std::fs::read_dir(&tenants).into_iter().flatten().flatten() {
            let _ = std::fs::set_permissions(tenant.path(), std::fs::Permissions::from_mode(0o700));
            for mark in std::fs::read_dir(tenant.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                match mark.file_name().to_str().and_then(hash_of) {
                    Some(hash) if state.disk.contains(&hash) => {}
                    _ => {
                        let _ = std::fs::remove_file(mark.path());
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn file(dir: &Path, hash: &Hash) -> PathBuf {
        dir.join(hex::encode(hash))
    }

    /// Whether `tenant` has presented the image with this hash (in this server, or
    /// in an earlier one that kept it on disk).
    fn presented_by(&self, tenant: &str, hash: &Hash) -> bool {
        if self
            .lock()
            .presented
            .get(tenant)
            .is_some_and(|set| set.contains(hash))
        {
            return true;
        }
        let Some(dir) = &self.dir else { return false };
        let marked = tenant_dir(dir, tenant).join(hex::encode(hash)).exists();
        if marked {
            self.lock()
                .presented
                .entry(tenant.to_owned())
                .or_default()
                .insert(*hash);
        }
        marked
    }

    /// The image with this hash, for `tenant`: only if kept, and if the tenant has
    /// presented its bytes before.
    pub fn get(&self, tenant: &str, hash: &Hash) -> Option<Arc<Vec<u8>>> {
        if !self.presented_by(tenant, hash) {
            return None;
        }
        let mut state = self.lock();
        if let Some(image) = state.memory.touch(hash).cloned() {
            state.disk.touch(hash);
            return Some(image);
        }
        let dir = self.dir.as_deref()?;
        state.disk.touch(hash)?;
        drop(state);
        let bytes = std::fs::read(Self::file(dir, hash)).ok()?;
        // A damaged file is not the image it is named after.
        if Sha256::digest(&bytes).as_slice() != hash {
            let mut state = self.lock();
            state.disk.remove(hash);
            let _ = std::fs::remove_file(Self::file(dir, hash));
            return None;
        }
        let image = Arc::new(bytes);
        let mut state = self.lock();
        let gone = state
            .memory
            .insert(*hash, image.clone(), image.len() as u64);
        self.evicted(&mut state, gone, false);
        Some(image)
    }

    /// Keeps an image `tenant` sent and a backend has loaded; returns its hash.
    pub fn insert(&self, tenant: &str, image: &[u8]) -> Hash {
        let hash: Hash = Sha256::digest(image).into();
        let len = image.len() as u64;
        let mut on_disk = false;
        if let Some(dir) = self.dir.as_deref() {
            on_disk = self.lock().disk.contains(&hash)
                || match Self::write_private(&Self::file(dir, &hash), image) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), "could not keep a module image on disk: {e}");
                        false
                    }
                };
            let marks = tenant_dir(dir, tenant);
            let marked = private_dir(&marks)
                .and_then(|()| Self::write_private(&marks.join(hex::encode(hash)), b""));
            if let Err(e) = marked {
                tracing::warn!(dir = %dir.display(), "could not note a tenant's module image: {e}");
            }
        }
        let mut state = self.lock();
        state
            .presented
            .entry(tenant.to_owned())
            .or_default()
            .insert(hash);
        if on_disk {
            let gone = state.disk.insert(hash, (), len);
            self.evicted(&mut state, gone, true);
        }
        if state.memory.touch(&hash).is_none() {
            let gone = state.memory.insert(hash, Arc::new(image.to_vec()), len);
            self.evicted(&mut state, gone, false);
        }
        hash
    }

    /// Forgets what left memory or (`from_disk`) the folder; an image in neither
    /// is no longer anyone's to load by hash.
    fn evicted(&self, state: &mut State, gone: Vec<Hash>, from_disk: bool) {
        for hash in gone {
            if from_disk {
                if let Some(dir) = &self.dir {
                    let _ = std::fs::remove_file(Self::file(dir, &hash));
                }
            }
            if state.memory.contains(&hash) || state.disk.contains(&hash) {
                continue;
            }
            for (tenant, set) in state.presented.iter_mut() {
                if set.remove(&hash) {
                    if let Some(dir) = &self.dir {
                        let _ =
                            std::fs::remove_file(tenant_dir(dir, tenant).join(hex::encode(hash)));
                    }
                }
            }
        }
    }

    /// Writes `bytes` to `path` readable by this user only, all or nothing.
    fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| file.write_all(bytes))
            .and_then(|()| std::fs::rename(&temporary, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }

    /// Bytes of images in memory and on disk now.
    pub fn bytes(&self) -> (u64, u64) {
        let state = self.lock();
        (state.memory.bytes, state.disk.bytes)
    }
}

/// A session that answers image look-ups by hash from the cache, for images its
/// tenant has presented, and keeps every image it is sent that its backend loads;
/// everything else goes to the backend's session.
pub(crate) struct CachingSession {
    inner: Box<dyn Session>,
    cache: Arc<ModuleCache>,
    tenant: String,
}

impl CachingSession {
    pub(crate) fn new(inner: Box<dyn Session>, cache: Arc<ModuleCache>, tenant: &str) -> Self {
        Self {
            inner,
            cache,
            tenant: tenant.to_owned(),
        }
    }
}

impl Session for CachingSession {
    fn handle(&mut self, request: Request) -> Result<Reply, CuError> {
        match request {
            Request::ModuleLoadCached { device, hash } => match self.cache.get(&self.tenant, &hash)
            {
                Some(image) => {
                    tracing::debug!(bytes = image.len(), "module image from the cache");
                    let image = ByteBuf::from(image.as_ref().clone());
                    match self.inner.handle(Request::ModuleLoad { device, image })? {
                        Reply::ModuleLoad(info) => Ok(Reply::ModuleLoadCached(Some(info))),
                        other => Ok(other),
                    }
                }
                None => Ok(Reply::ModuleLoadCached(None)),
            },
            Request::ModuleLoad { device, image } => {
                let reply = self.inner.handle(Request::ModuleLoad {
                    device,
                    image: image.clone(),
                })?;
                // Kept only once the backend has taken it: never an image it refused.
                self.cache.insert(&self.tenant, &image);
                Ok(reply)
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

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xpupool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn images_are_found_by_hash_in_memory_and_on_disk_by_their_tenant() {
        let dir = temp_dir("module-cache");
        let cache = ModuleCache::new(Some(dir.clone()));
        let hash = cache.insert("a", b"an image");
        assert_eq!(cache.get("a", &hash).unwrap().as_slice(), b"an image");
        assert!(cache.get("b", &hash).is_none(), "tenant b never sent it");
        assert!(cache.get("a", &[0; 32]).is_none());
        // A new server process finds it on disk, for the same tenant only.
        let restarted = ModuleCache::new(Some(dir.clone()));
        assert_eq!(restarted.get("a", &hash).unwrap().as_slice(), b"an image");
        assert!(restarted.get("b", &hash).is_none());
        // A damaged file is ignored.
        std::fs::write(dir.join(hex::encode(hash)), b"tampered").unwrap();
        assert!(ModuleCache::new(Some(dir.clone()))
            .get("a", &hash)
            .is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn memory_and_disk_are_bounded_least_recently_used_first_out() {
        let dir = temp_dir("module-cache-bounds");
        // Two images of 100 bytes fit in memory, three on disk.
        let cache = ModuleCache::with_limits(Some(dir.clone()), 200, 300);
        let images: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 100]).collect();
        let hashes: Vec<Hash> = images[..3].iter().map(|i| cache.insert("t", i)).collect();
        assert_eq!(cache.bytes(), (200, 300));
        // Using the first makes the second the oldest.
        assert!(cache.get("t", &hashes[0]).is_some());
        let fourth = cache.insert("t", &images[3]);
        assert_eq!(cache.bytes(), (200, 300), "never past the bounds");
        assert!(
            !dir.join(hex::encode(hashes[1])).exists(),
            "the oldest left the disk"
        );
        assert!(
            cache.get("t", &hashes[1]).is_none(),
            "and cannot be loaded by hash"
        );
        for kept in [hashes[0], hashes[2], fourth] {
            assert!(cache.get("t", &kept).is_some());
        }
        let files = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_file())
            .count();
        assert_eq!(files, 3);
        // A restarted server keeps to its bound with what it finds.
        let smaller = ModuleCache::with_limits(Some(dir.clone()), 200, 150);
        assert_eq!(smaller.bytes().1, 100);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
