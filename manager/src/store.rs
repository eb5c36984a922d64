//! Where the pool's state lives: in this manager's memory (one manager, nothing
//! else to run), or in etcd, where any number of managers share it.
//!
//! With etcd the whole [`Pool`] is one JSON value under `PREFIX/pool`; every
//! change reads it, applies the same function as in memory, and writes it back
//! only if nobody wrote in between (a transaction on its revision), else tries
//! again. A server's registration is a key under `PREFIX/alive/` bound to an etcd
//! lease with the server TTL, kept alive by whichever manager takes its
//! heartbeat: a server is alive exactly while its key exists. The pool's secret
//! (which server keys derive from) and join token are keys too, made once by the
//! first manager.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use xpupool_protocol::pool::ManagerError;

use crate::pool::{Alive, Pool, Timing};

/// Milliseconds since the Unix epoch, by this host's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How often a write that lost a race is tried again before the request fails.
const MAX_ATTEMPTS: usize = 256;

/// The pool's state.
pub enum Store {
    /// In this process.
    Memory(tokio::sync::Mutex<Pool>),
    /// In etcd.
    Etcd(Box<Etcd>),
}

/// A connection to etcd and where in it the pool is.
pub struct Etcd {
    client: Client,
    prefix: String,
}

impl Store {
    /// An empty pool in memory.
    pub fn memory() -> Self {
        Store::Memory(tokio::sync::Mutex::new(Pool::new(
            // Random, so a restarted manager's leases do not reuse live numbers.
            rand::random::<u32>() as u64,
        )))
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
            client,
            prefix: prefix.trim_end_matches('/').to_owned() + "/",
        };
        // Fail now, not at the first request, if etcd does not answer.
        store
            .client
            .get(store.key("pool"), None)
            .await
            .with_context(|| format!("reading from etcd at {endpoints:?}"))?;
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
                .map_err(|e| ManagerError::Unavailable(format!("etcd: {e:#}"))),
        }
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
            Store::Etcd(_) => {
                // `update` expires before it runs the change and writes only if
                // the state changed.
                self.update(timing, |_, _, _| ()).await?;
                Ok(Vec::new())
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

impl Etcd {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn alive_key(&self, address: &str) -> String {
        format!("{}alive/{address}", self.prefix)
    }

    /// The pool, its key's revision (0 when there is none yet), and the servers
    /// whose registration keys exist.
    async fn load(&self) -> Result<(Pool, i64, Alive)> {
        let mut client = self.client.clone();
        let got = client.get(self.key("pool"), None).await?;
        let (pool, revision) = match got.kvs().first() {
            Some(kv) => (
                serde_json::from_slice(kv.value()).context("the pool in etcd does not parse")?,
                kv.mod_revision(),
            ),
            None => (Pool::new(1), 0),
        };
        let alive_prefix = self.alive_key("");
        let keys = client
            .get(
                alive_prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        let alive = keys
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok())
            .filter_map(|k| k.strip_prefix(&alive_prefix))
            .map(str::to_owned)
            .collect();
        Ok((pool, revision, alive))
    }

    async fn update<R>(
        &self,
        timing: &Timing,
        change: &mut impl FnMut(&mut Pool, &Alive, u64) -> R,
    ) -> Result<R> {
        let key = self.key("pool");
        for attempt in 0..MAX_ATTEMPTS {
            let (before, revision, alive) = self.load().await?;
            let mut pool = before.clone();
            let now = now_ms();
            pool.expire(now, &alive, timing);
            let result = change(&mut pool, &alive, now);
            let old = serde_json::to_vec(&before)?;
            let new = serde_json::to_vec(&pool)?;
            if old == new && revision != 0 {
                return Ok(result);
            }
            let mut client = self.client.clone();
            let written = client
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            revision,
                        )])
                        .and_then([TxnOp::put(key.clone(), new, None)]),
                )
                .await?;
            if written.succeeded() {
                return Ok(result);
            }
            // Another manager wrote first: back off a little, at random, and redo.
            let pause = rand::random::<u64>() % (2 + 2 * attempt as u64).min(20);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        bail!("the pool in etcd changed under every one of {MAX_ATTEMPTS} attempts")
    }
}
