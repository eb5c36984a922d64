//! `xpupool manager --config manager.toml`: the pool's policy and its tenants,
//! checked as a whole at start; every error names the file, line and field.
//!
//! ```toml
//! listen = "0.0.0.0:7700"
//! policy = "least-loaded"     # bin-pack | priority | lowest-latency | lowest-energy
//! metrics_listen = "127.0.0.1:9401"
//! server_ttl_seconds = 10     # a silent server leaves placement after this
//! [[tenant]]
//! name = "team-a"
//! token_file = "/etc/xpupool/team-a.token"   # or token = "..."
//! memory = "160GiB"           # pool-wide: what its leases may reserve in all
//! devices = 4                 # pool-wide: devices its leases may hold
//! priority = "high"           # high | normal | low
//! compute_share = 0.5         # its share of each device it runs on
//! policy = "bin-pack"         # its own placement policy
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_spanned::Spanned;
use xpupool_protocol::pool::Class;
use xpupool_server::config::{Located, Size, TenantIdentities};

use crate::pool::{PolicyKind, TenantRule};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<Spanned<String>>,
    policy: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    server_ttl_seconds: Option<Spanned<u64>>,
    #[serde(default)]
    tenant: Vec<TenantFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    name: Spanned<String>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    memory: Option<Spanned<Size>>,
    devices: Option<Spanned<u32>>,
    priority: Option<Spanned<String>>,
    compute_share: Option<Spanned<f64>>,
    policy: Option<Spanned<String>>,
}

/// A manager's settings, as a valid file gives them.
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    /// Where to listen (QUIC).
    pub listen: Option<SocketAddr>,
    /// The pool's placement policy.
    pub policy: PolicyKind,
    /// Where to serve Prometheus metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// A silent server leaves placement after this many seconds.
    pub server_ttl_seconds: Option<u64>,
    /// Each tenant's token and rule.
    pub tenants: Vec<(String, TenantRule)>,
}

impl ManagerSettings {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the manager config: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    /// Checks `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, String> {
        let at = Located { path, text };
        let file: File = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => at.error(span, "config", e.message()),
            None => format!("{}: {}", path.display(), e.message()),
        })?;
        let address = |field: &str, value: &Option<Spanned<String>>| {
            value
                .as_ref()
                .map(|v| {
                    v.get_ref().parse::<SocketAddr>().map_err(|e| {
                        at.error(
                            v.span(),
                            field,
                            format!("{:?}: {e} (HOST:PORT)", v.get_ref()),
                        )
                    })
                })
                .transpose()
        };
        let policy_of = |field: &str, value: &Spanned<String>| {
            PolicyKind::parse(value.get_ref()).ok_or_else(|| {
                at.error(
                    value.span(),
                    field,
                    format!(
                        "{:?} is not one of {}",
                        value.get_ref(),
                        PolicyKind::NAMES.join(", ")
                    ),
                )
            })
        };
        let listen = address("listen", &file.listen)?;
        let metrics_listen = address("metrics_listen", &file.metrics_listen)?;
        let policy = match &file.policy {
            Some(p) => policy_of("policy", p)?,
            None => PolicyKind::LeastLoaded,
        };
        if let Some(ttl) = &file.server_ttl_seconds {
            if !(2..=3600).contains(ttl.get_ref()) {
                return Err(at.error(ttl.span(), "server_ttl_seconds", "must be 2 to 3600"));
            }
        }
        let mut tenants = Vec::new();
        let mut identities = TenantIdentities::default();
        for (i, t) in file.tenant.iter().enumerate() {
            let field = |name: &str| format!("tenant[{i}].{name}");
            let (name, token) =
                identities.check(&at, i, &t.name, t.token.as_ref(), t.token_file.as_ref())?;
            let memory_quota = t
                .memory
                .as_ref()
                .map(|m| {
                    m.get_ref()
                        .bytes()
                        .map_err(|e| at.error(m.span(), &field("memory"), e))
                })
                .transpose()?;
            let device_quota = match &t.devices {
                Some(d) if *d.get_ref() == 0 => {
                    return Err(at.error(d.span(), &field("devices"), "must be at least 1"))
                }
                other => other.as_ref().map(|d| *d.get_ref()),
            };
            let class = match &t.priority {
                None => Class::Normal,
                Some(p) => Class::parse(p.get_ref()).ok_or_else(|| {
                    at.error(
                        p.span(),
                        &field("priority"),
                        format!("{:?} is not one of high, normal, low", p.get_ref()),
                    )
                })?,
            };
            let compute_share = match &t.compute_share {
                Some(s) if !(*s.get_ref() > 0.0 && *s.get_ref() <= 1.0) => {
                    return Err(at.error(
                        s.span(),
                        &field("compute_share"),
                        format!("{} is not in (0, 1]", s.get_ref()),
                    ))
                }
                Some(s) => *s.get_ref(),
                None => 1.0,
            };
            let policy = t
                .policy
                .as_ref()
                .map(|p| policy_of(&field("policy"), p))
                .transpose()?;
            tenants.push((
                token,
                TenantRule {
                    name,
                    memory_quota,
                    device_quota,
                    class,
                    compute_share,
                    policy,
                },
            ));
        }
        if tenants.is_empty() {
            return Err(format!(
                "{}: tenant: no [[tenant]] table: no job could be placed",
                path.display()
            ));
        }
        Ok(Self {
            listen,
            policy,
            metrics_listen,
            server_ttl_seconds: file.server_ttl_seconds.map(|t| *t.get_ref()),
            tenants,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ManagerSettings, String> {
        ManagerSettings::parse(Path::new("manager.toml"), text)
    }

    #[test]
    fn a_full_file_parses() {
        let settings = parse(
            r#"
listen = "0.0.0.0:7700"
policy = "bin-pack"
[[tenant]]
name = "team-a"
token = "aaaaaaaaaaaaaaaaaaaa"
memory = "160GiB"
devices = 4
priority = "high"
policy = "lowest-energy"
[[tenant]]
name = "team-b"
token = "bbbbbbbbbbbbbbbbbbbb"
"#,
        )
        .unwrap();
        assert_eq!(settings.policy, PolicyKind::BinPack);
        let (token, a) = &settings.tenants[0];
        assert_eq!(token, "aaaaaaaaaaaaaaaaaaaa");
        assert_eq!(a.memory_quota, Some(160 << 30));
        assert_eq!(a.device_quota, Some(4));
        assert_eq!(a.class, Class::High);
        assert_eq!(a.policy, Some(PolicyKind::LowestEnergy));
        assert_eq!(settings.tenants[1].1.class, Class::Normal);
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let cases = [
            (
                "policy = \"random\"\n",
                "manager.toml:1:10: policy: \"random\" is not one of",
            ),
            (
                "[[tenant]]\nname = \"a\"\ntoken = \"short\"\n",
                "manager.toml:3:9: tenant[0].token: a token of 5 characters",
            ),
            (
                "[[tenant]]\nname = \"a\"\ntoken = \"aaaaaaaaaaaaaaaaaaaa\"\nmemory = \"lots\"\n",
                "manager.toml:4:10: tenant[0].memory:",
            ),
            (
                "[[tenant]]\nname = \"a\"\ntoken = \"aaaaaaaaaaaaaaaaaaaa\"\ncolour = 1\n",
                "manager.toml:4:1: config: unknown field `colour`",
            ),
            (
                "[[tenant]]\nname = \"a\"\ntoken = \"aaaaaaaaaaaaaaaaaaaa\"\n[[tenant]]\nname = \"b\"\ntoken = \"aaaaaaaaaaaaaaaaaaaa\"\n",
                "manager.toml:6:9: tenant[1].token: the same token as tenant \"a\"",
            ),
            ("listen = \"x\"\n", "manager.toml:1:10: listen:"),
            ("", "no [[tenant]] table"),
        ];
        for (text, expected) in cases {
            let error = parse(text).err().unwrap_or_default();
            assert!(error.contains(expected), "{text:?}: {error:?}");
        }
    }
}
