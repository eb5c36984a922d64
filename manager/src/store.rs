//! Where the pool's state lives: in this manager's memory (one manager, nothing
//! else to run), or in etcd, where any number of managers share it.
//!
//! With etcd the [`Pool`] is JSON under `PREFIX/state/`: its core (leases,
//! queue) in `state/pool` and each server's part (its entry and metering) in
//! `state/server/ADDRESS` ([`Pool::split`]). Every change reads them all at
//! one revision (in pages), applies the same function as in memory, and
//! writes back what changed only if nobody wrote the core or those parts in
//! between (one transaction), else tries again. A heartbeat changes its
//! server's part, and the core only when a lease's state changes. Hourly
//! records of hours gone by move out of the state to `PREFIX/hourly/HOUR/…`,
//! written once and deleted after [`HOURLY_KEEP_MS`]; so what a heartbeat
//! writes does not grow with the pool's size or history. A server's registration is a key under
//! `PREFIX/alive/` bound to an etcd lease with the server TTL, kept alive by
//! whichever manager takes its heartbeat: a server is alive exactly while its
//! key exists. The join and operator tokens are keys too, made once by the first
//! manager. (Every write is a new etcd revision: run etcd with
//! `--auto-compaction-retention`, as `deploy/k8s/10-etcd.yaml` does.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, KvClient, PutOptions, Txn,
    TxnOp,
};
use xpupool_protocol::pool::{ManagerError, UsageRecord};

use crate::pool::{Alive, Pool, ServerPart, Timing, HOURLY_KEEP_MS, HOUR_MS};

/// Milliseconds since the Unix epoch, by this host's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Servers whose past hours one write archives, besides those it writes anyway.
const ARCHIVE_PER_WRITE: usize = 8;

/// etcd's default bound on one transaction's operations (`--max-txn-ops`).
const MAX_TXN_OPERATIONS: usize = 128;

/// How often a write that lost a race is tried again before the request fails.
const MAX_ATTEMPTS: usize = 256;

/// Keys one read asks etcd for at first; a page whose answer is over the
/// decode limit below is asked again in halves, so however many servers the
/// pool has and however large their parts, each answer fits.
pub const KEYS_PER_READ: i64 = 256;

/// The largest answer this manager decodes from etcd (the gRPC default, 4 MiB,
/// is three default-sized values).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The pool's state.
pub enum Store {
    /// In this process.
    Memory(Box<tokio::sync::Mutex<Pool>>),
    /// In etcd.
    Etcd(Box<Etcd>),
}

/// A connection to etcd and where in it the pool is.
pub struct Etcd {
    client: Client,
    /// Reads, with the larger decode limit.
    kv: KvClient,
    prefix: String,
    /// Held across each change: this manager's own changes go one at a time
    /// instead of racing each other's compare-and-swap (other managers' still
    /// race, and lose nothing but a retry).
    writing: tokio::sync::Mutex<()>,
}

impl Store {
    /// An empty pool in memory.
    pub fn memory() -> Self {
        Store::Memory(Box::new(tokio::sync::Mutex::new(Pool::new(
            // The time in microseconds, so a restarted manager's leases do not
            // reuse numbers its servers have seen.
            now_ms().saturating_mul(1000),
        ))))
    }

    /// The pool in etcd at `endpoints` (comma-separated URLs), under `prefix`.
    pub async fn etcd(endpoints: &str, prefix: &str) -> Result<Self> {
        let endpoints: Vec<&str> = endpoints.split(',').map(str::trim).collect();
        let client =
            tokio::time::timeout(Duration::from_secs(10), Client::connect(&endpoints, None))
                .await
                .with_context(|| format!("no answer from etcd at {endpoints:?} within 10 s"))?
                .with_context(|| format!("connecting to etcd at {endpoints:?}"))?;
        let mut store = Etcd {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_ANSWER_BYTES),
            client,
            prefix: prefix.trim_end_matches('/').to_owned() + "/",
            writing: tokio::sync::Mutex::new(()),
        };
        // Fail now, not at the first request, if etcd does not answer.
        store
            .client
            .get(store.state_key(None), None)
            .await
            .with_context(|| format!("reading from etcd at {endpoints:?}"))?;
        store.migrate().await?;
        Ok(Store::Etcd(Box::new(store)))
    }

    /// Whether the state is shared through etcd.
    pub fn is_etcd(&self) -> bool {
        matches!(self, Store::Etcd(_))
    }

    /// The value of `name` shared by every manager: in etcd, the first manager's
    /// `proposed` value wins; in memory, `proposed` itself.
    pub async fn shared_value(&self, name: &str, proposed: &str) -> Result<String> {
        let Store::Etcd(etcd) = self else {
            return Ok(proposed.to_owned());
        };
        let key = etcd.key(name);
        let mut client = etcd.client.clone();
        client
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), proposed, None)]),
            )
            .await?;
        let got = client.get(key.clone(), None).await?;
        let value = got
            .kvs()
            .first()
            .with_context(|| format!("{key} vanished from etcd"))?;
        Ok(value.value_str()?.to_owned())
    }

    /// Runs `change` on the pool as it is now (after reclaiming what the TTLs
    /// say is gone), and keeps what it did. With etcd, `change` may run more than
    /// once (each time on the latest state); only the last run's effect is kept.
    pub async fn update<R>(
        &self,
        timing: &Timing,
        mut change: impl FnMut(&mut Pool, &Alive, u64) -> R,
    ) -> Result<R, ManagerError> {
        match self {
            Store::Memory(pool) => {
                let mut pool = pool.lock().await;
                let now = now_ms();
                let alive = pool.alive_by_heartbeat(now, timing);
                pool.expire(now, &alive, timing);
                Ok(change(&mut pool, &alive, now))
            }
            Store::Etcd(etcd) => etcd
                .update(timing, &mut change)
                .await
                .map(|(result, _)| result)
                .map_err(|e| ManagerError::Unavailable(format!("etcd: {e:#}"))),
        }
    }

    /// Hourly metering from the hour of `since_ms` on (every tenant).
    pub async fn hourly(
        &self,
        timing: &Timing,
        since_ms: u64,
    ) -> Result<Vec<UsageRecord>, ManagerError> {
        let unavailable = |e: anyhow::Error| ManagerError::Unavailable(format!("etcd: {e:#}"));
        let (hourly, mut records) = match self {
            Store::Memory(_) => (self.read(timing).await?.0.hourly, Vec::new()),
            // The archive and the state at one revision: an hour moving from
            // one to the other in between is then in exactly one of them.
            Store::Etcd(etcd) => {
                let (archived, revision) = etcd.archived(since_ms, 0).await.map_err(unavailable)?;
                let (pool, _, _, _) = etcd.load_at(revision).await.map_err(unavailable)?;
                (pool.hourly, archived)
            }
        };
        records.extend(hourly);
        records.retain(|u| u.since_ms + HOUR_MS > since_ms);
        Ok(merge_hours(records))
    }

    /// The pool now (with what the TTLs say is gone left out), who is alive,
    /// and the time it was read at; nothing is written.
    pub async fn read(&self, timing: &Timing) -> Result<(Pool, Alive, u64), ManagerError> {
        let (mut pool, alive) = match self {
            Store::Memory(pool) => {
                let pool = pool.lock().await.clone();
                let alive = pool.alive_by_heartbeat(now_ms(), timing);
                (pool, alive)
            }
            Store::Etcd(etcd) => {
                let (pool, _, alive) = etcd
                    .load()
                    .await
                    .map_err(|e| ManagerError::Unavailable(format!("etcd: {e:#}")))?;
                (pool, alive)
            }
        };
        let now = now_ms();
        pool.expire(now, &alive, timing);
        Ok((pool, alive, now))
    }

    /// Reclaims what the TTLs say is gone and writes it back; the leases reclaimed.
    pub async fn expire(&self, timing: &Timing) -> Result<Vec<u64>, ManagerError> {
        match self {
            Store::Memory(pool) => {
                let mut pool = pool.lock().await;
                let now = now_ms();
                let alive = pool.alive_by_heartbeat(now, timing);
                Ok(pool.expire(now, &alive, timing))
            }
            Store::Etcd(etcd) => {
                // `update` expires before it runs the change and writes only if
                // the state changed.
                let (_, gone) = etcd
                    .update(timing, &mut |_: &mut Pool, _: &Alive, _| ())
                    .await
                    .map_err(|e| ManagerError::Unavailable(format!("etcd: {e:#}")))?;
                etcd.forget_old_hours()
                    .await
                    .map_err(|e| ManagerError::Unavailable(format!("etcd: {e:#}")))?;
                Ok(gone)
            }
        }
    }

    /// Registers a server's liveness: with etcd, a key under an etcd lease of the
    /// server TTL, whose id is returned; nothing in memory.
    pub async fn register_alive(&self, address: &str, timing: &Timing) -> Result<Option<i64>> {
        let Store::Etcd(etcd) = self else {
            return Ok(None);
        };
        let mut client = etcd.client.clone();
        let ttl = (timing.server_ttl_ms / 1000).max(1) as i64;
        let lease = client.lease_grant(ttl, None).await?.id();
        client
            .put(
                etcd.alive_key(address),
                now_ms().to_string(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(Some(lease))
    }

    /// The etcd lease a server's alive key is bound to (`None`: no key, or
    /// state in memory).
    pub async fn alive_lease(&self, address: &str) -> Result<Option<i64>> {
        let Store::Etcd(etcd) = self else {
            return Ok(None);
        };
        let mut client = etcd.client.clone();
        let got = client.get(etcd.alive_key(address), None).await?;
        Ok(got.kvs().first().map(|kv| kv.lease()))
    }

    /// Keeps a server's etcd lease alive; `false` if it has lapsed already (the
    /// server must register again).
    pub async fn keep_alive(&self, lease: Option<i64>) -> Result<bool> {
        let (Store::Etcd(etcd), Some(lease)) = (self, lease) else {
            return Ok(true);
        };
        let mut client = etcd.client.clone();
        // Opening the keep-alive stream sends one keep-alive and reads its answer;
        // a lapsed lease is an error there.
        let opened = tokio::time::timeout(Duration::from_secs(5), client.lease_keep_alive(lease))
            .await
            .context("etcd did not answer a keep-alive")?;
        match opened {
            Ok(_) => Ok(true),
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// `records` in order of (hour, tenant, server, device), one record for each:
/// the same hour can be archived in two parts (managers whose clocks disagree
/// about when it ended), and they are added up, so an export paged by that key
/// neither skips nor repeats one.
pub fn merge_hours(mut records: Vec<UsageRecord>) -> Vec<UsageRecord> {
    records.sort_by(|a, b| {
        (a.since_ms, &a.tenant, &a.server, a.device)
            .cmp(&(b.since_ms, &b.tenant, &b.server, b.device))
    });
    let mut merged: Vec<UsageRecord> = Vec::with_capacity(records.len());
    for u in records {
        match merged.last_mut() {
            // One record per key of the export's cursor (a device swapped
            // within the hour keeps its first UUID).
            Some(m)
                if (m.since_ms, &m.tenant, &m.server, m.device)
                    == (u.since_ms, &u.tenant, &u.server, u.device) =>
            {
                m.gpu_seconds += u.gpu_seconds;
                m.gib_seconds += u.gib_seconds;
                m.updated_ms = m.updated_ms.max(u.updated_ms);
            }
            _ => merged.push(u),
        }
    }
    merged
}

impl Etcd {
    /// Every key in `[from, end)` as of `revision` (0: that of the first
    /// page), [`KEYS_PER_READ`] at a time; and the revision read at.
    async fn range_at(
        &self,
        from: String,
        end: String,
        keys_only: bool,
        mut revision: i64,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let mut kv = self.kv.clone();
        let mut all = Vec::new();
        let mut start = from.into_bytes();
        let mut limit = KEYS_PER_READ;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(limit)
                .with_revision(revision);
            if keys_only {
                options = options.with_keys_only();
            }
            let mut got = match kv.get(start.clone(), Some(options)).await {
                Ok(got) => got,
                // Too large an answer (not a compacted or future revision,
                // which etcd also reports as out of range).
                Err(etcd_client::Error::GRpcStatus(status))
                    if limit > 1
                        && matches!(
                            status.code(),
                            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
                        )
                        && !status.message().contains("revision") =>
                {
                    limit /= 2;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if revision == 0 {
                revision = got.header().map_or(0, |h| h.revision());
            }
            let more = got.more();
            let page = got.take_kvs();
            let Some(last) = page.last() else {
                break;
            };
            // The next page starts just after the last key of this one.
            start = last.key().to_vec();
            start.push(0);
            all.extend(page);
            if !more {
                break;
            }
        }
        Ok((all, revision))
    }

    /// Every key in `[from, end)` as of one revision.
    async fn range(&self, from: String, end: String, keys_only: bool) -> Result<Vec<KeyValue>> {
        Ok(self.range_at(from, end, keys_only, 0).await?.0)
    }

    /// Moves the state of older managers to the per-server layout, once: a
    /// pool kept whole under `PREFIX/pool`, or a core that holds the servers
    /// beside parts under `state/metering/` that hold only their metering.
    /// (Run with no older manager still writing.)
    async fn migrate(&self) -> Result<()> {
        let whole_key = self.key("pool");
        let core_key = self.state_key(None);
        let legacy = self.key("state/metering/");
        for _ in 0..8 {
            let mut kv = self.kv.clone();
            let whole = kv.get(whole_key.clone(), None).await?.take_kvs().pop();
            let state = self
                .range(self.key("state/"), self.key("state0"), false)
                .await?;
            let core = state.iter().find(|kv| kv.key() == core_key.as_bytes());
            let servers_prefix = self.state_key(Some(""));
            let has_new_parts = state
                .iter()
                .any(|kv| kv.key().starts_with(servers_prefix.as_bytes()));
            let mut legacy_parts = BTreeMap::new();
            for kv in &state {
                if let Some(address) = kv.key_str()?.strip_prefix(&legacy) {
                    let part: ServerPart =
                        serde_json::from_slice(kv.value()).with_context(|| {
                            format!("{} in etcd does not parse", kv.key_str().unwrap_or("?"))
                        })?;
                    legacy_parts.insert(address.to_owned(), part);
                }
            }
            let (pool, from) = match (core, &whole) {
                (None, Some(whole)) => (
                    serde_json::from_slice::<Pool>(whole.value())
                        .with_context(|| format!("{whole_key} in etcd does not parse"))?,
                    whole,
                ),
                (Some(core), _) => {
                    let pool: Pool = serde_json::from_slice(core.value())
                        .with_context(|| format!("{core_key} in etcd does not parse"))?;
                    if pool.servers.is_empty() && legacy_parts.is_empty() {
                        return Ok(());
                    }
                    if has_new_parts {
                        // Both layouts: older managers wrote after a move. Which
                        // is right cannot be told; nothing is overwritten.
                        bail!("{}state/ holds both the older and the per-server layout: an older manager wrote after the move; stop every older manager, then see the upgrade notes", self.prefix);
                    }
                    (Pool::join(pool, legacy_parts), core)
                }
                (None, None) => return Ok(()),
            };
            let (core, parts) = pool.split();
            let mut client = self.client.clone();
            // The parts first, in batches inside etcd's limits (128 operations,
            // 1.5 MiB a request), each only while what they came from is
            // unchanged; then the core, likewise, with the old keys gone.
            let unchanged = || {
                Compare::mod_revision(from.key().to_vec(), CompareOp::Equal, from.mod_revision())
            };
            let parts: Vec<(String, Vec<u8>)> = parts
                .iter()
                .map(|(a, p)| Ok((self.state_key(Some(a)), serde_json::to_vec(p)?)))
                .collect::<Result<_>>()?;
            let mut batches: Vec<Vec<TxnOp>> = vec![Vec::new()];
            let mut bytes = 0;
            for (key, value) in &parts {
                let last = batches.last_mut().expect("one batch at least");
                if !last.is_empty() && (last.len() >= 64 || bytes + value.len() > 1 << 20) {
                    batches.push(Vec::new());
                    bytes = 0;
                }
                bytes += key.len() + value.len();
                batches
                    .last_mut()
                    .expect("one batch at least")
                    .push(TxnOp::put(key.clone(), value.clone(), None));
            }
            let mut lost_race = false;
            for batch in batches.into_iter().filter(|b| !b.is_empty()) {
                let written = client
                    .txn(Txn::new().when([unchanged()]).and_then(batch))
                    .await
                    .with_context(|| format!("moving {} servers' parts", parts.len()))?;
                if !written.succeeded() {
                    lost_race = true;
                    break;
                }
            }
            if lost_race {
                continue;
            }
            let moved = client
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            from.key().to_vec(),
                            CompareOp::Equal,
                            from.mod_revision(),
                        )])
                        .and_then([
                            TxnOp::put(core_key.clone(), serde_json::to_vec(&core)?, None),
                            TxnOp::delete(whole_key.clone(), None),
                            TxnOp::delete(
                                legacy.clone(),
                                Some(DeleteOptions::new().with_range(self.key("state/metering0"))),
                            ),
                        ]),
                )
                .await?;
            if moved.succeeded() {
                tracing::info!(
                    servers = parts.len(),
                    "moved the pool's state to one etcd key per server under {}state/server/",
                    self.prefix
                );
                return Ok(());
            }
        }
        bail!("the pool's state in etcd kept changing while it was moved to the per-server layout; stop the older managers and start again")
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn alive_key(&self, address: &str) -> String {
        format!("{}alive/{address}", self.prefix)
    }

    fn state_key(&self, part: Option<&str>) -> String {
        match part {
            None => format!("{}state/pool", self.prefix),
            Some(address) => format!("{}state/server/{address}", self.prefix),
        }
    }

    fn hourly_key(&self, hour_ms: u64) -> String {
        format!("{}hourly/{hour_ms:016}/", self.prefix)
    }

    /// The pool (its core and every server's metering, read at one revision),
    /// each key's revision, and the servers whose registration keys exist.
    async fn load(&self) -> Result<(Pool, BTreeMap<String, i64>, Alive)> {
        self.load_at(0)
            .await
            .map(|(pool, revisions, alive, _)| (pool, revisions, alive))
    }

    /// [`Self::load`] as of `revision` (0: now), and the revision read at.
    async fn load_at(&self, revision: i64) -> Result<(Pool, BTreeMap<String, i64>, Alive, i64)> {
        let (got, revision) = self
            .range_at(self.key("state/"), self.key("state0"), false, revision)
            .await?; // '0' follows '/'
        let legacy = self.key("state/metering/");
        let mut core = None;
        let mut parts = BTreeMap::new();
        let mut revisions = BTreeMap::new();
        let servers = self.state_key(Some(""));
        for kv in &got {
            let key = kv.key_str()?;
            revisions.insert(key.to_owned(), kv.mod_revision());
            if key.starts_with(&legacy) {
                bail!("{key} is in the layout of an older manager, which is still writing it: stop the older managers (deploy with strategy Recreate), then start this one again to move the state");
            }
            if key == self.state_key(None) {
                let pool = serde_json::from_slice::<Pool>(kv.value())
                    .context("the pool in etcd does not parse")?;
                if !pool.servers.is_empty() {
                    bail!("the pool's core in etcd holds servers, as an older manager writes it: stop the older managers (deploy with strategy Recreate), then start this one again to move the state");
                }
                core = Some(pool);
            } else if let Some(address) = key.strip_prefix(&servers) {
                let part: ServerPart = serde_json::from_slice(kv.value())
                    .with_context(|| format!("{key} in etcd does not parse"))?;
                parts.insert(address.to_owned(), part);
            }
        }
        // A pool never written starts its lease numbers at this time in
        // microseconds, above any a lost one can have issued.
        let core = core.unwrap_or_else(|| Pool::new(now_ms().saturating_mul(1000)));
        let alive_prefix = self.alive_key("");
        let (keys, _) = self
            .range_at(alive_prefix.clone(), self.key("alive0"), true, revision)
            .await?;
        let alive = keys
            .iter()
            .filter_map(|kv| kv.key_str().ok())
            .filter_map(|k| k.strip_prefix(&alive_prefix))
            .map(str::to_owned)
            .collect();
        Ok((Pool::join(core, parts), revisions, alive, revision))
    }

    async fn update<R>(
        &self,
        timing: &Timing,
        change: &mut impl FnMut(&mut Pool, &Alive, u64) -> R,
    ) -> Result<(R, Vec<u64>)> {
        let core_key = self.state_key(None);
        let _one_at_a_time = self.writing.lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let (before, revisions, alive) = self.load().await?;
            let mut pool = before.clone();
            let now = now_ms();
            let gone = pool.expire(now, &alive, timing);
            let result = change(&mut pool, &alive, now);
            let (old_core, old_parts) = before.split();
            let (new_core, mut new_parts) = pool.split();
            // Hours gone by leave the state for keys of their own, written once.
            let hour = now - now % HOUR_MS;
            // A few servers' records at a time, those written anyway first, so one
            // transaction stays far inside etcd's limits (128 operations, 1.5 MiB)
            // however many servers the pool has: the rest follow in later writes.
            let mut archive: BTreeMap<u64, Vec<UsageRecord>> = BTreeMap::new();
            let mut archiving: Vec<&String> = new_parts
                .iter()
                .filter(|(a, p)| old_parts.get(*a) != Some(*p))
                .map(|(a, _)| a)
                .collect();
            archiving.extend(
                new_parts
                    .iter()
                    .filter(|(a, p)| {
                        old_parts.get(*a) == Some(*p) && p.hourly.iter().any(|u| u.since_ms < hour)
                    })
                    .map(|(a, _)| a)
                    .take(ARCHIVE_PER_WRITE),
            );
            let archiving: Vec<String> = archiving.into_iter().cloned().collect();
            for (address, part) in new_parts.iter_mut() {
                if !archiving.contains(address) {
                    continue;
                }
                let (past, current): (Vec<UsageRecord>, Vec<UsageRecord>) =
                    std::mem::take(&mut part.hourly)
                        .into_iter()
                        .partition(|u| u.since_ms < hour);
                part.hourly = current;
                for u in past {
                    archive.entry(u.since_ms).or_default().push(u);
                }
            }
            // The core is compared always (every decision reads it), each part
            // written only if it changed, compared by its own revision.
            let revision = |key: &str| revisions.get(key).copied();
            let compare = |key: &str| match revision(key) {
                Some(r) => Compare::mod_revision(key, CompareOp::Equal, r),
                None => Compare::create_revision(key, CompareOp::Equal, 0),
            };
            let mut compares = vec![compare(&core_key)];
            let mut puts = Vec::new();
            if serde_json::to_vec(&old_core)? != serde_json::to_vec(&new_core)?
                || revision(&core_key).is_none()
            {
                puts.push(TxnOp::put(
                    core_key.clone(),
                    serde_json::to_vec(&new_core)?,
                    None,
                ));
            }
            for (address, part) in &new_parts {
                if old_parts.get(address) == Some(part) {
                    continue;
                }
                let key = self.state_key(Some(address));
                compares.push(compare(&key));
                puts.push(TxnOp::put(key, serde_json::to_vec(part)?, None));
            }
            // A lease made here was decided on its server's part as read (its
            // key, devices, memory): the write holds only if that is unchanged.
            let placed_on: std::collections::BTreeSet<&str> = new_core
                .leases
                .iter()
                .filter(|(id, _)| !old_core.leases.contains_key(id))
                .map(|(_, l)| l.claims.server.as_str())
                .collect();
            for server in placed_on {
                if old_parts.get(server) == new_parts.get(server) {
                    compares.push(compare(&self.state_key(Some(server))));
                }
            }
            for (since, records) in &archive {
                let key = format!("{}{:016x}", self.hourly_key(*since), rand::random::<u64>());
                puts.push(TxnOp::put(key, serde_json::to_vec(records)?, None));
            }
            if puts.is_empty() {
                return Ok((result, gone));
            }
            // Inside etcd's limits, or the write is refused here with a reason
            // (every part of a pass is bounded, so this is not expected).
            let operations = compares.len() + puts.len();
            if operations > MAX_TXN_OPERATIONS {
                bail!("one write of {operations} operations, over etcd's {MAX_TXN_OPERATIONS}");
            }
            let mut client = self.client.clone();
            let written = client.txn(Txn::new().when(compares).and_then(puts)).await?;
            if written.succeeded() {
                return Ok((result, gone));
            }
            // Another manager wrote first: back off a little, at random, and redo.
            let pause = rand::random::<u64>() % (2 + 2 * attempt as u64).min(20);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        bail!("the pool in etcd changed under every one of {MAX_ATTEMPTS} attempts")
    }

    /// Hourly records of hours gone by, from the hour of `since_ms` on, as of
    /// `revision` (0: now), and the revision read at.
    async fn archived(&self, since_ms: u64, revision: i64) -> Result<(Vec<UsageRecord>, i64)> {
        let from = self.hourly_key(since_ms - since_ms % HOUR_MS);
        let end = format!("{}hourly0", self.prefix); // '0' follows '/'
        let (got, revision) = self.range_at(from, end, false, revision).await?;
        let mut records = Vec::new();
        for kv in &got {
            let mut some: Vec<UsageRecord> =
                serde_json::from_slice(kv.value()).with_context(|| {
                    format!("{} in etcd does not parse", kv.key_str().unwrap_or("?"))
                })?;
            records.append(&mut some);
        }
        Ok((records, revision))
    }

    /// Deletes archived hours older than [`HOURLY_KEEP_MS`].
    async fn forget_old_hours(&self) -> Result<()> {
        let mut client = self.client.clone();
        let cutoff = now_ms().saturating_sub(HOURLY_KEEP_MS);
        client
            .delete(
                self.key("hourly/"),
                Some(DeleteOptions::new().with_range(self.hourly_key(cutoff - cutoff % HOUR_MS))),
            )
            .await?;
        Ok(())
    }
}
