//! `xpupool server --config server.toml`: the server's settings and its tenant
//! table, checked as a whole before anything is served. Every error names the
//! file, the line and the field; `kill -HUP` reads the file again and, if it is
//! still valid, replaces the tenant table ([`crate::server::Tenants::reload`]).
//!
//! ```toml
//! listen = "0.0.0.0:7800"
//! backend = "mock"                  # or "cuda", "hip", "acl"
//! metrics_listen = "127.0.0.1:9400"
//! [mock]
//! devices = 2
//! memory = "16GiB"                  # each
//! [[tenant]]
//! name = "team-a"
//! token_file = "/etc/xpupool/team-a.token"   # or token = "..."
//! memory_limit = "40GiB"            # on each device it uses
//! compute_share = 0.7               # its share of each device under contention
//! priority = "high"                 # high | normal | low
//! devices = [0, 1]                  # the host's devices it may use (default: all)
//! sm_limit = 0.5                    # optional ceiling, fraction of SMs
//! max_sessions = 64                 # sessions open at once
//! ```

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::scheduler::Priority;
use crate::server::TokenEntry;
use crate::tenancy::{Policy, MAX_DEVICES};

/// Shares may add up to this much over 1.0 (rounding in a hand-written file).
const SHARE_TOLERANCE: f64 = 1e-9;
/// A token shorter than this is refused: it would be guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// A size: `"16GiB"` or a number of bytes.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// A number of bytes.
    Bytes(u64),
    /// A number with a unit.
    Text(String),
}

impl Size {
    /// The bytes it says; more than 0.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(0) => Err("must be more than 0".to_owned()),
            Size::Bytes(n) => Ok(*n),
            Size::Text(t) => crate::parse_size(t),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<Spanned<String>>,
    backend: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    isolation: Option<Spanned<String>>,
    max_sessions_per_tenant: Option<Spanned<usize>>,
    mock: Option<MockFile>,
    #[serde(default)]
    tenant: Vec<TenantFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MockFile {
    devices: Option<Spanned<u32>>,
    memory: Option<Spanned<Size>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    name: Spanned<String>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    memory_limit: Option<Spanned<Size>>,
    compute_share: Option<Spanned<f64>>,
    priority: Option<Spanned<String>>,
    devices: Option<Spanned<Vec<u32>>>,
    sm_limit: Option<Spanned<f64>>,
    max_sessions: Option<Spanned<usize>>,
}

/// The mock backend's devices.
#[derive(Debug, Clone, PartialEq)]
pub struct MockSettings {
    /// How many.
    pub devices: u32,
    /// Bytes of memory each.
    pub memory: u64,
}

/// A server's settings, as a valid file gives them.
#[derive(Clone)]
pub struct ServerSettings {
    /// Where to listen (QUIC).
    pub listen: Option<SocketAddr>,
    /// `cuda`, `hip` or `mock`.
    pub backend: Option<String>,
    /// Where to serve Prometheus metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// `auto`, `process` or `none`.
    pub isolation: Option<String>,
    /// The mock's devices, if a `[mock]` table was given.
    pub mock: Option<MockSettings>,
    /// The tenants' tokens and policies.
    pub tokens: Vec<TokenEntry>,
    /// For each tenant, where its `devices` list is (to name it in an error).
    device_lists: Vec<(String, Vec<u32>, String)>,
    /// The file, for errors found later.
    path: PathBuf,
}

/// Where in a file an error is.
pub struct Located<'a> {
    /// The file.
    pub path: &'a Path,
    /// Its contents.
    pub text: &'a str,
}

impl Located<'_> {
    /// `FILE:LINE:COLUMN: FIELD: MESSAGE` for the byte range `span` of the text.
    pub fn error(
        &self,
        span: Range<usize>,
        field: &str,
        message: impl std::fmt::Display,
    ) -> String {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!(
            "{}:{line}:{column}: {field}: {message}",
            self.path.display()
        )
    }
}

/// Checks tenants' names and tokens as a config file gives them, one tenant
/// after another: a name of up to 64 letters, digits, '-', '_' and '.' that no
/// tenant before had; exactly one of `token` and `token_file`, of at least
/// [`MIN_TOKEN_LEN`] characters, that no tenant before had.
#[derive(Default)]
pub struct TenantIdentities {
    names: HashSet<String>,
    /// Token to the tenant that has it.
    tokens: HashMap<String, String>,
}

impl TenantIdentities {
    /// Tenant `i`'s name and token, or the error naming the field.
    pub fn check(
        &mut self,
        at: &Located<'_>,
        i: usize,
        name: &Spanned<String>,
        token: Option<&Spanned<String>>,
        token_file: Option<&Spanned<PathBuf>>,
    ) -> Result<(String, String), String> {
        let field = |f: &str| format!("tenant[{i}].{f}");
        let text = name.get_ref().clone();
        if text.is_empty()
            || text.len() > 64
            || !text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(at.error(
                name.span(),
                &field("name"),
                format!("{text:?}: use up to 64 letters, digits, '-', '_' and '.'"),
            ));
        }
        if !self.names.insert(text.clone()) {
            return Err(at.error(
                name.span(),
                &field("name"),
                format!("a second tenant named {text:?}"),
            ));
        }
        let (secret, span, token_field) = match (token, token_file) {
            (Some(token), None) => (
                token.get_ref().trim().to_owned(),
                token.span(),
                field("token"),
            ),
            (None, Some(file)) => {
                let token = read_token_file(file.get_ref())
                    .map_err(|e| at.error(file.span(), &field("token_file"), e))?;
                (token, file.span(), field("token_file"))
            }
            (Some(token), Some(_)) => {
                return Err(at.error(
                    token.span(),
                    &field("token"),
                    "give token or token_file, not both",
                ))
            }
            (None, None) => {
                return Err(at.error(
                    name.span(),
                    &format!("tenant[{i}]"),
                    "needs token or token_file",
                ))
            }
        };
        if secret.len() < MIN_TOKEN_LEN {
            return Err(at.error(
                span,
                &token_field,
                format!("a token of {} characters is guessable; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)", secret.len()),
            ));
        }
        if let Some(other) = self.tokens.insert(secret.clone(), text.clone()) {
            return Err(at.error(
                span,
                &token_field,
                format!("the same token as tenant {other:?}"),
            ));
        }
        Ok((text, secret))
    }
}

impl ServerSettings {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the server config: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    /// Checks `text` as the contents of `path` (token files are read relative to
    /// the working folder, or absolute).
    pub fn parse(path: &Path, text: &str) -> Result<Self, String> {
        let at = Located { path, text };
        let file: File = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => at.error(span, "config", e.message()),
            None => format!("{}: {}", path.display(), e.message()),
        })?;
        let address =
            |field: &str, value: &Option<Spanned<String>>| -> Result<Option<SocketAddr>, String> {
                value
                    .as_ref()
                    .map(|v| {
                        v.get_ref().parse().map_err(|e| {
                            at.error(
                                v.span(),
                                field,
                                format!("{:?}: {e} (HOST:PORT)", v.get_ref()),
                            )
                        })
                    })
                    .transpose()
            };
        let listen = address("listen", &file.listen)?;
        let metrics_listen = address("metrics_listen", &file.metrics_listen)?;
        let one_of = |field: &str,
                      value: &Option<Spanned<String>>,
                      allowed: &[&str]|
         -> Result<Option<String>, String> {
            match value {
                Some(v) if !allowed.contains(&v.get_ref().as_str()) => Err(at.error(
                    v.span(),
                    field,
                    format!("{:?} is not one of {}", v.get_ref(), allowed.join(", ")),
                )),
                other => Ok(other.as_ref().map(|v| v.get_ref().clone())),
            }
        };
        let backend = one_of("backend", &file.backend, &["acl", "cuda", "hip", "mock"])?;
        let isolation = one_of("isolation", &file.isolation, &["auto", "process", "none"])?;
        let size = |field: &str, value: &Spanned<Size>| -> Result<u64, String> {
            value
                .get_ref()
                .bytes()
                .map_err(|e| at.error(value.span(), field, e))
        };
        let mock = match &file.mock {
            None => None,
            Some(m) => {
                let devices = match &m.devices {
                    Some(d) if !(1..=crate::mock::MAX_MOCK_DEVICES).contains(d.get_ref()) => {
                        return Err(at.error(
                            d.span(),
                            "mock.devices",
                            format!(
                                "{} is not between 1 and {}",
                                d.get_ref(),
                                crate::mock::MAX_MOCK_DEVICES
                            ),
                        ))
                    }
                    Some(d) => *d.get_ref(),
                    None => 1,
                };
                let memory = match &m.memory {
                    Some(s) => size("mock.memory", s)?,
                    None => 16 << 30,
                };
                Some(MockSettings { devices, memory })
            }
        };
        if let (Some(_), Some(b @ ("acl" | "cuda" | "hip"))) = (&mock, backend.as_deref()) {
            return Err(format!(
                "{}: [mock]: a [mock] table with backend = \"{b}\"",
                path.display()
            ));
        }
        let default_sessions = file
            .max_sessions_per_tenant
            .as_ref()
            .map_or(crate::server::DEFAULT_MAX_SESSIONS_PER_TENANT, |m| {
                *m.get_ref()
            });

        let mut tokens = Vec::new();
        let mut device_lists = Vec::new();
        let mut identities = TenantIdentities::default();
        let mut total_share = 0.0;
        let mut last_share_span = 0..0;
        for (i, t) in file.tenant.iter().enumerate() {
            let field = |name: &str| format!("tenant[{i}].{name}");
            let (name, token) =
                identities.check(&at, i, &t.name, t.token.as_ref(), t.token_file.as_ref())?;
            let memory_limit = t
                .memory_limit
                .as_ref()
                .map(|m| size(&field("memory_limit"), m))
                .transpose()?;
            let fraction =
                |name: &str, value: &Option<Spanned<f64>>| -> Result<Option<f64>, String> {
                    match value {
                        Some(v) if !(*v.get_ref() > 0.0 && *v.get_ref() <= 1.0) => Err(at.error(
                            v.span(),
                            &field(name),
                            format!("{} is not in (0, 1]", v.get_ref()),
                        )),
                        other => Ok(other.as_ref().map(|v| *v.get_ref())),
                    }
                };
            let share = fraction("compute_share", &t.compute_share)?;
            let sm_limit = fraction("sm_limit", &t.sm_limit)?;
            if let Some(s) = &t.compute_share {
                total_share += share.unwrap_or(0.0);
                last_share_span = s.span();
            }
            let priority = match &t.priority {
                None => Priority::Normal,
                Some(p) => match p.get_ref().as_str() {
                    "high" => Priority::High,
                    "normal" => Priority::Normal,
                    "low" => Priority::Low,
                    other => {
                        return Err(at.error(
                            p.span(),
                            &field("priority"),
                            format!("{other:?} is not one of high, normal, low"),
                        ))
                    }
                },
            };
            let devices = match &t.devices {
                None => None,
                Some(d) => {
                    let list = d.get_ref().clone();
                    if list.is_empty() {
                        return Err(at.error(d.span(), &field("devices"), "an empty list lets the tenant use nothing; leave it out for all devices"));
                    }
                    let mut sorted = list.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    if sorted.len() != list.len() {
                        return Err(at.error(d.span(), &field("devices"), "a device listed twice"));
                    }
                    if let Some(&bad) = list.iter().find(|&&n| n as usize >= MAX_DEVICES) {
                        return Err(at.error(
                            d.span(),
                            &field("devices"),
                            format!("device {bad}: a host has at most {MAX_DEVICES}"),
                        ));
                    }
                    device_lists.push((
                        name.clone(),
                        list.clone(),
                        at.error(d.span(), &field("devices"), ""),
                    ));
                    Some(list)
                }
            };
            let max_sessions = match &t.max_sessions {
                Some(m) if *m.get_ref() == 0 => {
                    return Err(at.error(m.span(), &field("max_sessions"), "must be at least 1"))
                }
                Some(m) => *m.get_ref(),
                None => default_sessions,
            };
            tokens.push(TokenEntry {
                token,
                tenant: name,
                policy: Policy {
                    memory_limit,
                    // Without a share of its own, a tenant competes with an equal
                    // weight to the others that have none.
                    compute_share: share.unwrap_or(0.0),
                    priority,
                    devices,
                    sm_limit,
                    max_sessions,
                },
            });
        }
        if total_share > 1.0 + SHARE_TOLERANCE {
            return Err(at.error(
                last_share_span,
                "compute_share",
                format!("the tenants' shares add up to {total_share:.3}, over 1.0"),
            ));
        }
        // Tenants without a share split what the others left, equally.
        let unshared = tokens
            .iter()
            .filter(|t| t.policy.compute_share == 0.0)
            .count();
        if unshared > 0 {
            let rest = ((1.0 - total_share) / unshared as f64).max(0.01);
            for t in tokens.iter_mut().filter(|t| t.policy.compute_share == 0.0) {
                t.policy.compute_share = rest;
            }
        }
        Ok(Self {
            listen,
            backend,
            metrics_listen,
            isolation,
            mock,
            tokens,
            device_lists,
            path: path.to_owned(),
        })
    }

    /// Refuses a table without tenants (nobody could connect), unless the server
    /// is in a pool, where its manager's leases admit clients instead.
    pub fn check_tenants(&self) -> Result<(), String> {
        if self.tokens.is_empty() {
            return Err(format!(
                "{}: tenant: no [[tenant]] table: nobody could connect (or join a pool with --manager)",
                self.path.display()
            ));
        }
        Ok(())
    }

    /// Checks each tenant's `devices` against the host's `count` devices.
    pub fn check_devices(&self, count: usize) -> Result<(), String> {
        for (tenant, list, place) in &self.device_lists {
            if let Some(&bad) = list.iter().find(|&&d| d as usize >= count) {
                return Err(format!(
                    "{place}device {bad} of tenant {tenant:?}: this host has {count} device{} (0..{count})",
                    if count == 1 { "" } else { "s" }
                ));
            }
        }
        Ok(())
    }
}

/// The token in a token file: its first line that is not empty or a `#` comment.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    Ok(read_token_lines(path)?.swap_remove(0))
}

/// The lines of a token file (`TOKEN` or `TENANT=TOKEN`), without `#` comments and
/// empty lines; at least one. Warns when other users may read the file.
pub fn read_token_lines(path: &Path) -> Result<Vec<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        tracing::warn!(
            "{} can be read by other users; `chmod 600` it",
            path.display()
        );
    }
    let lines: Vec<String> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        return Err(format!("{} holds no token", path.display()));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbb";

    fn parse(text: &str) -> Result<ServerSettings, String> {
        ServerSettings::parse(Path::new("server.toml"), text)
    }

    #[test]
    fn the_documented_example_parses() {
        let dir = std::env::temp_dir().join(format!("xpupool-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("team-b.token");
        std::fs::write(&file, format!("# team b\n{B}\n")).unwrap();
        let text = format!(
            r#"
listen = "0.0.0.0:7800"
backend = "mock"
metrics_listen = "127.0.0.1:9400"
[mock]
devices = 2
memory = "16GiB"
[[tenant]]
name = "team-a"
token = "{A}"
memory_limit = "40GiB"
compute_share = 0.7
priority = "high"
devices = [0, 1]
[[tenant]]
name = "team-b"
token_file = "{}"
memory_limit = "20GiB"
compute_share = 0.3
sm_limit = 0.5
"#,
            file.display()
        );
        let s = parse(&text).unwrap();
        assert_eq!(s.listen, Some("0.0.0.0:7800".parse().unwrap()));
        assert_eq!(
            s.mock,
            Some(MockSettings {
                devices: 2,
                memory: 16 << 30
            })
        );
        assert_eq!(s.tokens.len(), 2);
        let (a, b) = (&s.tokens[0], &s.tokens[1]);
        assert_eq!((a.tenant.as_str(), a.token.as_str()), ("team-a", A));
        assert_eq!(a.policy.memory_limit, Some(40 << 30));
        assert_eq!(a.policy.priority, Priority::High);
        assert_eq!(a.policy.devices, Some(vec![0, 1]));
        assert_eq!((b.token.as_str(), b.policy.sm_limit), (B, Some(0.5)));
        assert_eq!(b.policy.compute_share, 0.3);
        assert!(s.check_devices(2).is_ok());
        let e = s.check_devices(1).unwrap_err();
        assert!(e.starts_with("server.toml:14:"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let cases: &[(&str, &str)] = &[
            (
                &format!("[[tenant]]\nname = \"a\"\ntoken = \"{A}\"\ncompute_share = 0.7\n[[tenant]]\nname = \"b\"\ntoken = \"{B}\"\ncompute_share = 0.4\n"),
                "server.toml:8:17: compute_share: the tenants' shares add up to 1.100, over 1.0",
            ),
            (
                &format!("[[tenant]]\nname = \"a\"\ntoken = \"{A}\"\ncolour = \"red\"\n"),
                "server.toml:4:1: config: unknown field `colour`",
            ),
            (
                &format!("[[tenant]]\nname = \"a\"\ntoken = \"{A}\"\n[[tenant]]\nname = \"b\"\ntoken = \"{A}\"\n"),
                "server.toml:6:9: tenant[1].token: the same token as tenant \"a\"",
            ),
            (
                "[[tenant]]\nname = \"a\"\ntoken_file = \"/nonexistent/a.token\"\n",
                "server.toml:3:14: tenant[0].token_file: cannot read the token file /nonexistent/a.token",
            ),
            (
                &format!("[[tenant]]\nname = \"a\"\ntoken = \"{A}\"\npriority = \"urgent\"\n"),
                "server.toml:4:12: tenant[0].priority: \"urgent\" is not one of high, normal, low",
            ),
            (
                &format!("[[tenant]]\nname = \"a\"\ntoken = \"{A}\"\nmemory_limit = \"lots\"\n"),
                "server.toml:4:16: tenant[0].memory_limit: \"lots\" is not a size",
            ),
            (
                "[[tenant]]\nname = \"a\"\ntoken = \"short\"\n",
                "server.toml:3:9: tenant[0].token: a token of 5 characters is guessable",
            ),
            (
                &format!("listen = \"nowhere\"\n[[tenant]]\nname = \"a\"\ntoken = \"{A}\"\n"),
                "server.toml:1:10: listen: \"nowhere\"",
            ),
            (
                &format!("[[tenant]]\nname = \"a\"\ntoken = \"{A}\"\nsm_limit = 1.5\n"),
                "server.toml:4:12: tenant[0].sm_limit: 1.5 is not in (0, 1]",
            ),
        ];
        let no_tenants = parse("backend = \"mock\"\n").unwrap().check_tenants();
        assert!(no_tenants
            .unwrap_err()
            .contains("server.toml: tenant: no [[tenant]] table"));
        for (text, expected) in cases {
            let e = parse(text)
                .err()
                .unwrap_or_else(|| panic!("accepted:\n{text}"));
            assert!(
                e.starts_with(expected),
                "{text}\ngave: {e}\nnot:  {expected}"
            );
        }
    }

    #[test]
    fn the_backends_are_acl_cuda_hip_and_mock() {
        for name in ["acl", "cuda", "hip", "mock"] {
            let s = parse(&format!("backend = \"{name}\"\n")).unwrap();
            assert_eq!(s.backend.as_deref(), Some(name));
        }
        let e = parse("backend = \"opencl\"\n").err().unwrap();
        assert!(e.contains("is not one of acl, cuda, hip, mock"), "{e}");
        let e = parse("backend = \"hip\"\n[mock]\ndevices = 2\n")
            .err()
            .unwrap();
        assert!(e.contains("a [mock] table with backend = \"hip\""), "{e}");
    }

    #[test]
    fn tenants_without_a_share_split_the_rest() {
        let text = format!(
            "[[tenant]]\nname = \"a\"\ntoken = \"{A}\"\ncompute_share = 0.5\n[[tenant]]\nname = \"b\"\ntoken = \"{B}\"\n[[tenant]]\nname = \"c\"\ntoken = \"cccccccccccccccccccc\"\n"
        );
        let s = parse(&text).unwrap();
        let shares: Vec<f64> = s.tokens.iter().map(|t| t.policy.compute_share).collect();
        assert_eq!(shares, vec![0.5, 0.25, 0.25]);
    }
}
