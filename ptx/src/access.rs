//! Per-thread execution context: operand values and memory accesses
//! (device memory through [`crate::Memory`], shared/local/param buffers owned
//! by the block), atomics, `cp.async` and the printf/assert builtins.

use crate::builtins::{self, ArgSource, Builtin};
use crate::exec::Env;
use crate::ir::*;
use crate::mem::{self, Win};
use crate::ExecError;

/// Where an access lands.
enum Target {
    Device(u64),
    Shared(u64),
    Local(u64),
    KParam(u64),
    FParam(u64),
}

fn space_name(t: &Target) -> &'static str {
    match t {
        Target::Device(_) => "global",
        Target::Shared(_) => "shared",
        Target::Local(_) => "local",
        Target::KParam(_) | Target::FParam(_) => "param",
    }
}

/// Execution context of one thread.
pub(crate) struct Cx<'b> {
    pub(crate) env: &'b Env<'b>,
    pub(crate) regs: &'b mut [u64],
    pub(crate) local: &'b mut [u8],
    pub(crate) ps: &'b mut [u8],
    pub(crate) shared: &'b mut [u8],
    pub(crate) ctaid: [u32; 3],
    pub(crate) t: usize,
}

impl Cx<'_> {
    #[inline(always)]
    pub(crate) fn v(&self, o: Op) -> u64 {
        match o {
            Op::R(r) => self.regs[r as usize],
            Op::I(i) => i,
            Op::S(s) => self.env.sreg(s, self.ctaid, self.t),
            Op::G(g) => self.env.gsyms[g as usize],
        }
    }

    #[inline(always)]
    pub(crate) fn set(&mut self, d: u32, v: u64) {
        self.regs[d as usize] = v;
    }

    #[inline]
    fn target(&self, sp: MSp, addr: u64) -> Target {
        match sp {
            MSp::Global => Target::Device(addr),
            MSp::Shared => Target::Shared(addr & 0xFFFF_FFFF),
            MSp::Local => Target::Local(addr & 0xFFFF_FFFF),
            MSp::KParam => Target::KParam(addr & 0xFFFF_FFFF),
            MSp::FParam => Target::FParam(addr & 0xFFFF_FFFF),
            MSp::Generic => match mem::window(addr) {
                Win::Shared(o) => Target::Shared(o),
                Win::Local(o) => Target::Local(o),
                Win::Param(o) => Target::KParam(o),
                Win::Device => Target::Device(addr),
            },
        }
    }

    fn buf(&mut self, t: &Target) -> (&mut [u8], u64) {
        match *t {
            Target::Shared(o) => (&mut *self.shared, o),
            Target::Local(o) => (&mut *self.local, o),
            Target::FParam(o) => (&mut *self.ps, o),
            // Kernel params are read-only; stores to them are rejected by the caller.
            Target::KParam(_) | Target::Device(_) => (&mut [], 0),
        }
    }

    pub(crate) fn load(
        &mut self,
        sp: MSp,
        t: Ty,
        n: u8,
        d: &[u32; 4],
        addr: u64,
        line: u32,
    ) -> Result<(), ExecError> {
        let size = t.bytes();
        let len = size * n as usize;
        let tg = self.target(sp, addr);
        match tg {
            Target::Device(a) => {
                let p = self
                    .env
                    .mem
                    .translate(a, len)
                    .ok_or_else(|| self.env.illegal(a, len, "global", line))?;
                for (k, &dk) in d.iter().take(n as usize).enumerate() {
                    // SAFETY: translate() vouched for [a, a+len); k*size+size <= len.
                    let v = unsafe { mem::read_raw(p.add(k * size), size) };
                    self.set(dk, mem::extend(t, v));
                }
            }
            Target::KParam(o) => {
                for (k, &dk) in d.iter().take(n as usize).enumerate() {
                    let v = mem::read_buf(self.env.params, o + (k * size) as u64, size)
                        .ok_or_else(|| self.env.illegal(o, len, "param", line))?;
                    self.set(dk, mem::extend(t, v));
                }
            }
            _ => {
                let name = space_name(&tg);
                let env = self.env;
                let (buf, o) = self.buf(&tg);
                let mut vals = [0u64; 4];
                for (k, v) in vals.iter_mut().take(n as usize).enumerate() {
                    *v = mem::read_buf(buf, o + (k * size) as u64, size)
                        .ok_or_else(|| env.illegal(o, len, name, line))?;
                }
                for (k, &dk) in d.iter().take(n as usize).enumerate() {
                    self.set(dk, mem::extend(t, vals[k]));
                }
            }
        }
        Ok(())
    }

    /// One value of `size` bytes at `addr` in `sp` (a `wmma.load` element, a
    /// surface texel); `device` names device memory in an error.
    pub(crate) fn read_at(
        &mut self,
        sp: MSp,
        addr: u64,
        size: usize,
        device: &'static str,
        line: u32,
    ) -> Result<u64, ExecError> {
        let tg = self.target(sp, addr);
        match tg {
            Target::Device(a) => {
                let p = self
                    .env
                    .mem
                    .translate(a, size)
                    .ok_or_else(|| self.env.illegal(a, size, device, line))?;
                // SAFETY: translate() vouched for [a, a+size).
                Ok(unsafe { mem::read_raw(p, size) })
            }
            Target::KParam(o) => mem::read_buf(self.env.params, o, size)
                .ok_or_else(|| self.env.illegal(o, size, "param", line)),
            _ => {
                let name = space_name(&tg);
                let env = self.env;
                let (buf, o) = self.buf(&tg);
                mem::read_buf(buf, o, size).ok_or_else(|| env.illegal(o, size, name, line))
            }
        }
    }

    /// Writes one value of `size` bytes at `addr` in `sp` (a `wmma.store`
    /// element, a surface texel); `device` names device memory in an error.
    pub(crate) fn write_at(
        &mut self,
        sp: MSp,
        addr: u64,
        size: usize,
        v: u64,
        device: &'static str,
        line: u32,
    ) -> Result<(), ExecError> {
        let tg = self.target(sp, addr);
        match tg {
            Target::Device(a) => {
                let p = self
                    .env
                    .mem
                    .translate(a, size)
                    .ok_or_else(|| self.env.illegal(a, size, device, line))?;
                // SAFETY: translate() vouched for [a, a+size).
                unsafe { mem::write_raw(p, size, v) };
                Ok(())
            }
            Target::KParam(o) => Err(self.env.illegal(o, size, "param", line)),
            _ => {
                let name = space_name(&tg);
                let env = self.env;
                let (buf, o) = self.buf(&tg);
                mem::write_buf(buf, o, size, v).ok_or_else(|| env.illegal(o, size, name, line))
            }
        }
    }

    pub(crate) fn store(
        &mut self,
        sp: MSp,
        t: Ty,
        n: u8,
        s: &[Op; 4],
        addr: u64,
        line: u32,
    ) -> Result<(), ExecError> {
        let size = t.bytes();
        let len = size * n as usize;
        let mut vals = [0u64; 4];
        for (k, v) in vals.iter_mut().take(n as usize).enumerate() {
            *v = self.v(s[k]);
        }
        let tg = self.target(sp, addr);
        match tg {
            Target::Device(a) => {
                let p = self
                    .env
                    .mem
                    .translate(a, len)
                    .ok_or_else(|| self.env.illegal(a, len, "global", line))?;
                for (k, &v) in vals.iter().take(n as usize).enumerate() {
                    // SAFETY: translate() vouched for [a, a+len); k*size+size <= len.
                    unsafe { mem::write_raw(p.add(k * size), size, v) };
                }
            }
            Target::KParam(o) => return Err(self.env.illegal(o, len, "param", line)),
            _ => {
                let name = space_name(&tg);
                let env = self.env;
                let (buf, o) = self.buf(&tg);
                for (k, &v) in vals.iter().take(n as usize).enumerate() {
                    mem::write_buf(buf, o + (k * size) as u64, size, v)
                        .ok_or_else(|| env.illegal(o, len, name, line))?;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn atom(
        &mut self,
        sp: MSp,
        op: AtomOp,
        t: Ty,
        addr: u64,
        b: u64,
        c: u64,
        line: u32,
    ) -> Result<u64, ExecError> {
        let size = t.bytes();
        let tg = self.target(sp, addr);
        match tg {
            Target::Device(a) => {
                // 16-bit atomics work on the containing aligned 32-bit word.
                let (lo, span) = if size == 2 { (a & !3, 4) } else { (a, size) };
                let p = self
                    .env
                    .mem
                    .translate(lo, span)
                    .ok_or_else(|| self.env.illegal(a, size, "global", line))?
                    .wrapping_add((a - lo) as usize);
                // SAFETY: translate() vouched for [lo, lo+span), which contains
                // [a, a+size) and, for 16-bit operands, the whole aligned word.
                unsafe { mem::atomic_device(p, op, t, b, c) }.ok_or_else(|| {
                    ExecError::MisalignedAddress {
                        addr: a,
                        len: size,
                        kernel: self.env.prog.name.clone(),
                        line,
                    }
                })
            }
            Target::KParam(o) => Err(self.env.illegal(o, size, "param", line)),
            _ => {
                // Shared/local memory belongs to this block, which runs on one OS thread.
                let name = space_name(&tg);
                let env = self.env;
                let (buf, o) = self.buf(&tg);
                let old =
                    mem::read_buf(buf, o, size).ok_or_else(|| env.illegal(o, size, name, line))?;
                mem::write_buf(buf, o, size, mem::rmw(op, t, old, b, c));
                Ok(old)
            }
        }
    }

    pub(crate) fn param_moves(&mut self, moves: &[ParamMove]) {
        for mv in moves {
            match *mv {
                ParamMove::Copy { src, dst, size } => {
                    let (s, d, n) = (src as usize, dst as usize, size as usize);
                    self.ps.copy_within(s..s + n, d);
                }
                ParamMove::FromOp { op, dst, size } => {
                    let v = self.v(op);
                    let n = (size as usize).min(8);
                    mem::write_buf(self.ps, dst as u64, n, v);
                }
                ParamMove::RegMove { op, reg } => {
                    let v = self.v(op);
                    self.set(reg, v);
                }
                ParamMove::ToReg { src, reg, size } => {
                    let v = mem::read_buf(self.ps, src as u64, (size as usize).min(8)).unwrap_or(0);
                    self.set(reg, v);
                }
            }
        }
    }
}

/// printf argument reader over a thread's view of memory.
struct CxArgs<'c, 'b> {
    cx: &'c mut Cx<'b>,
    base: u64,
}

impl ArgSource for CxArgs<'_, '_> {
    type Err = ExecError;
    fn arg(&mut self, off: u64, size: usize) -> Result<u64, ExecError> {
        self.cx.read_val(self.base.wrapping_add(off), size)
    }
    fn string(&mut self, addr: u64) -> Result<Vec<u8>, ExecError> {
        self.cx.read_cstr(addr)
    }
}

impl Cx<'_> {
    /// Reads `size` bytes at a generic address.
    pub(crate) fn read_val(&mut self, addr: u64, size: usize) -> Result<u64, ExecError> {
        let tg = self.target(MSp::Generic, addr);
        let env = self.env;
        let name = space_name(&tg);
        match tg {
            Target::Device(a) => {
                let p = env
                    .mem
                    .translate(a, size)
                    .ok_or_else(|| env.illegal(a, size, name, 0))?;
                // SAFETY: translate() vouched for [a, a+size).
                Ok(unsafe { mem::read_raw(p, size) })
            }
            Target::KParam(o) => {
                mem::read_buf(env.params, o, size).ok_or_else(|| env.illegal(addr, size, name, 0))
            }
            _ => {
                let (buf, o) = self.buf(&tg);
                mem::read_buf(buf, o, size).ok_or_else(|| env.illegal(addr, size, name, 0))
            }
        }
    }

    /// `cp.async` done synchronously: copy `n` bytes global -> shared and
    /// zero-fill up to `size`.
    pub(crate) fn cp_async(
        &mut self,
        dst: u64,
        src: u64,
        size: usize,
        n: usize,
        line: u32,
    ) -> Result<(), ExecError> {
        let mut tmp = [0u8; 16];
        let env = self.env;
        if n > 0 {
            let p = env
                .mem
                .translate(src, n)
                .ok_or_else(|| env.illegal(src, n, "global", line))?;
            for (k, b) in tmp.iter_mut().take(n).enumerate() {
                // SAFETY: translate() vouched for [src, src+n).
                *b = unsafe { mem::read_raw(p.add(k), 1) } as u8;
            }
        }
        let o = dst & 0xFFFF_FFFF;
        let end = o as usize + size;
        match self.shared.get_mut(o as usize..end) {
            Some(d) => {
                d.copy_from_slice(&tmp[..size]);
                Ok(())
            }
            None => Err(env.illegal(o, size, "shared", line)),
        }
    }

    pub(crate) fn read_cstr(&mut self, addr: u64) -> Result<Vec<u8>, ExecError> {
        let mut out = Vec::new();
        for k in 0..65536u64 {
            let b = self.read_val(addr.wrapping_add(k), 1)? as u8;
            if b == 0 {
                break;
            }
            out.push(b);
        }
        Ok(out)
    }

    pub(crate) fn builtin(
        &mut self,
        which: Builtin,
        params: &[(u32, u32)],
        ret: Option<(u32, u32)>,
    ) -> Result<(), ExecError> {
        let arg = |cx: &Self, i: usize| -> u64 {
            params
                .get(i)
                .and_then(|&(o, s)| mem::read_buf(cx.ps, o as u64, (s as usize).min(8)))
                .unwrap_or(0)
        };
        match which {
            Builtin::Printf => {
                let (fmt, args) = (arg(self, 0), arg(self, 1));
                let fmt = self.read_cstr(fmt)?;
                let s = builtins::format(
                    &fmt,
                    &mut CxArgs {
                        cx: self,
                        base: args,
                    },
                )?;
                {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(s.as_bytes());
                    let _ = out.flush();
                }
                if let Some((o, size)) = ret {
                    mem::write_buf(self.ps, o as u64, (size as usize).min(8), s.len() as u64);
                }
                Ok(())
            }
            Builtin::Malloc => {
                let address = self.env.mem.heap_alloc(arg(self, 0));
                if let Some((o, size)) = ret {
                    mem::write_buf(self.ps, o as u64, (size as usize).min(8), address);
                }
                Ok(())
            }
            Builtin::Free => {
                let address = arg(self, 0);
                // free(NULL) does nothing; any other address must be the heap's.
                if address != 0 && !self.env.mem.heap_free(address) {
                    return Err(ExecError::Unsupported(format!(
                        "kernel {}: free({address:#x}) of memory device malloc did not give",
                        self.env.prog.name
                    )));
                }
                Ok(())
            }
            Builtin::AssertFail => {
                let msg = self.read_cstr(arg(self, 0))?;
                let file = self.read_cstr(arg(self, 1))?;
                let line = arg(self, 2) as u32;
                let func = self.read_cstr(arg(self, 3))?;
                let tid = [0u8, 1, 2].map(|d| self.env.sreg(Sreg::Tid(d), self.ctaid, self.t));
                let text = format!(
                    "{}:{line}: {}: block [{},{},{}], thread [{},{},{}] Assertion `{}` failed.",
                    String::from_utf8_lossy(&file),
                    String::from_utf8_lossy(&func),
                    self.ctaid[0],
                    self.ctaid[1],
                    self.ctaid[2],
                    tid[0],
                    tid[1],
                    tid[2],
                    String::from_utf8_lossy(&msg)
                );
                tracing::error!("{text}");
                Err(ExecError::AssertFailed(text))
            }
        }
    }
}
