//! Sessions in worker processes (docs/DESIGN.md §3.7): each client session of an isolated
//! backend runs in a child process of its own, so a fault in one tenant's kernel (a
//! sticky device error, a crash in the driver) cannot touch another tenant, and
//! everything the session held on the device is released when the process ends.
//!
//! The parent keeps the control plane: its tenancy layer (`tenancy.rs`) charges the
//! tenant's ledger and schedules launches around the worker's session as around any
//! other. Parent and worker talk over the worker's stdin/stdout with the same frames
//! as the wire.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xpupool_protocol::{code, frame, CuError, DeviceInfo, Reply, Request};

use crate::backend::{Backend, Session, Tenant};
use crate::tenancy::Policy;

/// What a worker reports once its backend is open.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ready {
    name: String,
    driver_version: i32,
    devices: Vec<DeviceInfo>,
    device_address_range: (u64, u64),
}

fn read_message<T: serde::de::DeserializeOwned>(input: &mut impl Read) -> Result<Option<T>> {
    crate::server::read_frame_blocking(input)?
        .map(|body| Ok(frame::decode(&body)?))
        .transpose()
}

fn write_message<T: Serialize>(output: &mut impl Write, message: &T) -> Result<()> {
    output.write_all(&frame::encode(message)?)?;
    output.flush()?;
    Ok(())
}

/// The worker's side: serve one session of `backend` over stdin/stdout until the
/// parent closes stdin. Run by `xpupool server-worker`.
pub fn serve_worker(backend: Result<Arc<dyn Backend>>, policy: Policy) -> Result<()> {
    let mut input = std::io::stdin().lock();
    // The protocol gets the original stdout; anything else that writes to fd 1
    // (a kernel's printf, the driver) goes to stderr instead of into the frames.
    // SAFETY: plain descriptor duplication on this process's own fds.
    let protocol_fd = unsafe { libc::dup(1) };
    if protocol_fd < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        bail!(
            "redirecting the worker's stdout: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: `protocol_fd` is a fresh descriptor owned by nothing else.
    let mut output = std::io::BufWriter::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(protocol_fd)
    });
    let backend = match backend {
        Ok(backend) => backend,
        Err(e) => {
            write_message(&mut output, &Err::<Ready, String>(format!("{e:#}")))?;
            return Err(e);
        }
    };
    // The parent keeps the tenant's ledger and shares; the worker applies what only
    // the backend can (its SM ceiling), from the policy it was started with.
    let tenant = Tenant::with_policy("worker", policy);
    let ready = Ready {
        name: backend.name().to_owned(),
        driver_version: backend.driver_version(),
        devices: backend.devices(),
        device_address_range: backend.device_address_range(),
    };
    write_message(&mut output, &Ok::<_, String>(ready))?;
    let mut session = backend
        .open_session(&tenant)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    while let Some(request) = read_message::<Request>(&mut input)? {
        let reply = session.handle(request);
        write_message(&mut output, &reply)?;
    }
    Ok(())
}

/// A backend whose sessions each run in a worker process started by `command`.
pub struct IsolatedBackend {
    command: Vec<OsString>,
    ready: Ready,
    /// The process ids of the live session workers: what the host's NVML is
    /// asked about for the memory the backend holds.
    workers: Arc<Mutex<HashSet<u32>>>,
    /// The host's NVML (cuda only), loaded on first use.
    nvml: OnceLock<Option<crate::cuda::power::Power>>,
}

impl IsolatedBackend {
    /// The host's NVML, for a backend on NVIDIA's driver.
    fn nvml(&self) -> Option<&crate::cuda::power::Power> {
        self.nvml
            .get_or_init(|| {
                (self.ready.name == "cuda")
                    .then(|| crate::cuda::power::load_for(&self.ready.devices))
                    .flatten()
            })
            .as_ref()
    }

    /// Starts one worker to learn the backend's devices, and keeps `command` (program
    /// and arguments) to start one per session.
    pub fn new(command: Vec<OsString>) -> Result<Self> {
        let (mut child, _, mut stdout) = spawn(&command, &[])?;
        let ready = read_ready(&mut stdout);
        let _ = child.kill();
        let _ = child.wait();
        Ok(Self {
            command,
            ready: ready?,
            workers: Arc::new(Mutex::new(HashSet::new())),
            nvml: OnceLock::new(),
        })
    }
}

fn spawn(command: &[OsString], env: &[(&str, String)]) -> Result<(Child, ChildStdin, ChildStdout)> {
    let (program, args) = command.split_first().context("empty worker command")?;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting worker {}", program.to_string_lossy()))?;
    let stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    Ok((child, stdin, stdout))
}

/// Whether the host runs an MPS control daemon: its pipe directory
/// (`CUDA_MPS_PIPE_DIRECTORY`, by default `/tmp/nvidia-mps`) has its `control`
/// socket.
pub fn mps_running() -> bool {
    let dir = std::env::var_os("CUDA_MPS_PIPE_DIRECTORY")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/tmp/nvidia-mps".into());
    std::path::Path::new(&dir).join("control").exists()
}

fn read_ready(stdout: &mut ChildStdout) -> Result<Ready> {
    match read_message::<Result<Ready, String>>(stdout)? {
        Some(Ok(ready)) => Ok(ready),
        Some(Err(reason)) => bail!("worker could not open its backend: {reason}"),
        None => bail!("worker exited before it was ready"),
    }
}

impl Backend for IsolatedBackend {
    fn name(&self) -> &'static str {
        match self.ready.name.as_str() {
            "cuda" => "cuda",
            "hip" => "hip",
            "acl" => "acl",
            "mock" => "mock",
            _ => "isolated",
        }
    }

    fn driver_version(&self) -> i32 {
        self.ready.driver_version
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.ready.devices.clone()
    }

    /// A mock in a worker still runs each launch before it answers.
    fn launches_complete_on_return(&self) -> bool {
        self.ready.name == "mock"
    }

    fn device_address_range(&self) -> (u64, u64) {
        self.ready.device_address_range
    }

    fn power_watts(&self, device: u32) -> Option<f64> {
        self.nvml()?.watts(device)
    }

    /// What the session workers hold, as the host's NVML counts it per process.
    fn memory_used(&self, device: u32) -> Option<u64> {
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.nvml()?.memory_of(device, &workers)
    }

    fn open_session(&self, tenant: &Tenant) -> Result<Box<dyn Session>, CuError> {
        let unavailable = |e: anyhow::Error| {
            CuError::new(code::UNKNOWN, format!("starting a session worker: {e:#}"))
        };
        let mut command = self.command.clone();
        let mut env = Vec::new();
        if let Some(fraction) = tenant.policy().sm_limit {
            command.push("--sm-limit".into());
            command.push(fraction.to_string().into());
            // On a host running MPS, the ceiling is the worker's active thread
            // percentage (it is read when the worker's CUDA starts).
            if self.ready.name == "cuda" && mps_running() {
                let percent = ((fraction * 100.0).ceil() as u32).clamp(1, 100);
                env.push((crate::cuda::MPS_PERCENTAGE, percent.to_string()));
            }
        }
        let (child, stdin, mut stdout) = spawn(&command, &env).map_err(unavailable)?;
        let pid = child.id();
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid);
        let mut session = WorkerSession {
            child,
            stdin: Some(stdin),
            stdout: None,
            dead: None,
            workers: self.workers.clone(),
        };
        read_ready(&mut stdout).map_err(unavailable)?;
        session.stdout = Some(stdout);
        Ok(Box::new(session))
    }
}

/// The parent's end of one worker.
struct WorkerSession {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    /// Set once the worker is gone; every later call fails with it.
    dead: Option<CuError>,
    /// The backend's set of live workers, which this one leaves when it ends.
    workers: Arc<Mutex<HashSet<u32>>>,
}

impl WorkerSession {
    fn forward(&mut self, request: &Request) -> Result<Reply, CuError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        let (Some(stdin), Some(stdout)) = (self.stdin.as_mut(), self.stdout.as_mut()) else {
            return Err(CuError::new(
                code::LAUNCH_FAILED,
                "the session's worker is closed",
            ));
        };
        let result = write_message(stdin, request)
            .and_then(|()| read_message::<Result<Reply, CuError>>(stdout));
        match result {
            Ok(Some(reply)) => reply,
            outcome => {
                let status = self.child.try_wait().ok().flatten();
                let why = match (outcome, status) {
                    (_, Some(status)) => format!("the session's worker process ended ({status})"),
                    (Err(e), None) => format!("the session's worker process is unreachable: {e:#}"),
                    (Ok(_), None) => "the session's worker process closed its output".to_owned(),
                };
                tracing::error!("{why}");
                let e = CuError::new(code::LAUNCH_FAILED, why);
                self.dead = Some(e.clone());
                Err(e)
            }
        }
    }
}

impl Session for WorkerSession {
    fn handle(&mut self, request: Request) -> Result<Reply, CuError> {
        self.forward(&request)
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        // Out of the live set before it can exit and its id be reused.
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.child.id());
        // Closing stdin ends the worker's loop; it frees its session and exits.
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if std::time::Instant::now() >= deadline => {
                    tracing::warn!("session worker did not exit; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    }
}
