//! Sessions in worker processes (docs/DESIGN.md §3.7): each client session of an isolated
//! backend runs in a child process of its own, so a fault in one tenant's kernel (a
//! sticky device error, a crash in the driver) cannot touch another tenant, and
//! everything the session held on the device is released when the process ends.
//!
//! The parent keeps the control plane: it charges the tenant's memory ledger for
//! every allocation before forwarding it, refunds on free and when the worker ends,
//! and clamps the free memory the worker reports to what the tenant has left. Parent
//! and worker talk over the worker's stdin/stdout with the same frames as the wire.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xpupool_protocol::{code, frame, CuError, DeviceInfo, Reply, Request};

use crate::backend::{Backend, Session, Tenant};
use crate::quota::{allocation_charge, MemoryLedger};

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
pub fn serve_worker(backend: Result<Arc<dyn Backend>>) -> Result<()> {
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
    // The parent enforces the tenant's limits; here the session is unlimited.
    let tenant = Tenant::new("worker", None);
    let ready = Ready {
        name: backend.name().to_owned(),
        driver_version: backend.driver_version(),
        devices: backend.devices(&tenant),
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
}

impl IsolatedBackend {
    /// Starts one worker to learn the backend's devices, and keeps `command` (program
    /// and arguments) to start one per session.
    pub fn new(command: Vec<OsString>) -> Result<Self> {
        let (mut child, _, mut stdout) = spawn(&command)?;
        let ready = read_ready(&mut stdout);
        let _ = child.kill();
        let _ = child.wait();
        Ok(Self {
            command,
            ready: ready?,
        })
    }
}

fn spawn(command: &[OsString]) -> Result<(Child, ChildStdin, ChildStdout)> {
    let (program, args) = command.split_first().context("empty worker command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting worker {}", program.to_string_lossy()))?;
    let stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    Ok((child, stdin, stdout))
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
            "mock" => "mock",
            _ => "isolated",
        }
    }

    fn driver_version(&self) -> i32 {
        self.ready.driver_version
    }

    fn devices(&self, tenant: &Tenant) -> Vec<DeviceInfo> {
        let mut devices = self.ready.devices.clone();
        if let Some(limit) = tenant.memory.limit() {
            for device in &mut devices {
                device.total_memory = device.total_memory.min(limit);
            }
        }
        devices
    }

    fn device_address_range(&self) -> (u64, u64) {
        self.ready.device_address_range
    }

    fn open_session(&self, tenant: &Tenant) -> Result<Box<dyn Session>, CuError> {
        let unavailable = |e: anyhow::Error| {
            CuError::new(code::UNKNOWN, format!("starting a session worker: {e:#}"))
        };
        let (child, stdin, mut stdout) = spawn(&self.command).map_err(unavailable)?;
        let mut session = WorkerSession {
            child,
            stdin: Some(stdin),
            stdout: None,
            tenant: tenant.memory.clone(),
            allocations: BTreeMap::new(),
            dead: None,
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
    tenant: Arc<MemoryLedger>,
    /// Allocations charged to the tenant: address → bytes.
    allocations: BTreeMap<u64, u64>,
    /// Set once the worker is gone; every later call fails with it.
    dead: Option<CuError>,
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
        match request {
            Request::MemAlloc { bytes, .. } => {
                let charge = allocation_charge(bytes)
                    .ok_or_else(|| CuError::new(code::OUT_OF_MEMORY, "allocation too large"))?;
                self.tenant.charge(charge)?;
                let reply = self.forward(&request);
                match &reply {
                    Ok(Reply::MemAlloc(address)) => {
                        self.allocations.insert(*address, charge);
                    }
                    _ => self.tenant.refund(charge),
                }
                reply
            }
            Request::MemFree { ptr } => {
                let reply = self.forward(&request);
                if reply.is_ok() {
                    if let Some(bytes) = self.allocations.remove(&ptr) {
                        self.tenant.refund(bytes);
                    }
                }
                reply
            }
            Request::MemGetInfo { .. } => match self.forward(&request)? {
                Reply::MemGetInfo((free, total)) => {
                    let total = self.tenant.limit().map_or(total, |l| l.min(total));
                    Ok(Reply::MemGetInfo((
                        free.min(self.tenant.remaining()),
                        total,
                    )))
                }
                other => Ok(other),
            },
            other => self.forward(&other),
        }
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
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
        let held: u64 = self.allocations.values().sum();
        self.tenant.refund(held);
    }
}
