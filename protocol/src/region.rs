//! The shared-memory region of a same-host (Unix socket) connection: bulk copies
//! travel through it instead of through the socket, so that a host-to-device copy
//! costs the client one memcpy into the region and the server one memcpy out.
//!
//! The client makes the region (a sealed memfd) and passes its descriptor as the very
//! first thing on the socket: one byte, [`WITH_REGION`] carrying the descriptor
//! (`SCM_RIGHTS`) or [`NO_REGION`], before the [`crate::Hello`]. The server maps it
//! only if it can never shrink (`F_SEAL_SHRINK`), so a client truncating it cannot
//! make the server fault; it says in the [`crate::Welcome`] whether it took it.
//!
//! The bytes are the client's: it may change them at any time, and the server only
//! ever copies them, never decides anything on what they hold.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// The first byte on a Unix connection: a region's descriptor comes with it.
pub const WITH_REGION: u8 = b'R';
/// The first byte on a Unix connection: no region.
pub const NO_REGION: u8 = b'N';
/// Largest region a server maps.
pub const MAX_REGION: usize = 1 << 30;

/// A mapped region.
pub struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, owned by this value until dropped;
// access goes through &self / &mut self like any buffer.
unsafe impl Send for Region {}
// SAFETY: as above; shared access only reads or copies through raw pointers.
unsafe impl Sync for Region {}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Region {
    /// A new region of `len` bytes (client side), sealed so that it can neither
    /// shrink nor grow, and its descriptor to send to the server.
    pub fn create(len: usize) -> io::Result<(Region, OwnedFd)> {
        // SAFETY: a NUL-terminated name and flags; the result is checked.
        let fd = check(unsafe {
            libc::memfd_create(
                c"xpupool-region".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        })?;
        // SAFETY: a descriptor just made and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain calls on a descriptor we own.
        unsafe {
            check(libc::ftruncate(fd.as_raw_fd(), len as libc::off_t))?;
            check(libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            ))?;
        }
        let region = Self::map(fd.as_raw_fd(), len)?;
        Ok((region, fd))
    }

    /// Maps a region received from a client (server side), if it is sealed
    /// against shrinking and at most [`MAX_REGION`] bytes.
    pub fn map_received(fd: &OwnedFd) -> io::Result<Region> {
        // SAFETY: a query on a descriptor we own.
        let seals = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the shared-memory region is not sealed against shrinking",
            ));
        }
        // Plain shared memory only: a hugetlbfs file could lose its pages to a
        // hole the client punches, and the server would fault reading them.
        // SAFETY: fstatfs into a zeroed struct on a descriptor we own.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut fs) })?;
        if fs.f_type != libc::TMPFS_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the shared-memory region is not plain shared memory (a memfd)",
            ));
        }
        // SAFETY: fstat into a zeroed struct on a descriptor we own.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) })?;
        let len = stat.st_size as usize;
        if len == 0 || len > MAX_REGION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a shared-memory region of {len} bytes"),
            ));
        }
        Self::map(fd.as_raw_fd(), len)
    }

    fn map(fd: RawFd, len: usize) -> io::Result<Region> {
        // SAFETY: a fresh shared mapping of `len` bytes of a file at least that long.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never, once made).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn range(&self, offset: u64, len: usize) -> Option<usize> {
        let offset = usize::try_from(offset).ok()?;
        (offset.checked_add(len)? <= self.len).then_some(offset)
    }

    /// The bytes at `[offset, offset + len)`, if inside the region.
    pub fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let at = self.range(offset, len)?;
        // SAFETY: inside the mapping, which lives as long as `self`. The other side
        // may write these bytes meanwhile; they are only copied, never interpreted.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(at), len) })
    }

    /// The bytes at `[offset, offset + len)` to write, if inside the region.
    pub fn bytes_mut(&mut self, offset: u64, len: usize) -> Option<&mut [u8]> {
        let at = self.range(offset, len)?;
        // SAFETY: as in `bytes`; `&mut self` makes this the only view from this side.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Sends the first byte of a Unix connection, with the region's descriptor if any.
pub fn send_region(socket: &UnixStream, fd: Option<&OwnedFd>) -> io::Result<()> {
    match fd {
        Some(fd) => send_byte_with_fds(socket, WITH_REGION, &[fd.as_raw_fd()]),
        None => send_byte_with_fds(socket, NO_REGION, &[]),
    }
}

/// Sends one byte, with `fds` (at most two) attached as `SCM_RIGHTS`.
fn send_byte_with_fds(socket: &UnixStream, byte: u8, fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "more than two descriptors",
        ));
    }
    let byte = [byte];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // Room for two descriptors, aligned as cmsghdr needs.
    let mut control = [0u64; 4];
    let data_len = size_of_val(fds) as u32;
    // SAFETY: a zeroed msghdr pointing at live buffers; CMSG_* walk within `control`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(data_len) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, &fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), fd);
            }
        }
        let sent = libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
        if sent != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives the first byte of a Unix connection and the descriptor it carries.
pub fn recv_region(socket: &impl AsRawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    // SAFETY: as in `send_region`; a received descriptor is owned from here on.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        let got = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if got != 1 {
            return Err(if got == 0 {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the client hung up")
            } else {
                io::Error::last_os_error()
            });
        }
        // Take ownership of every descriptor that came, so none leaks whatever
        // the client sent; exactly one is acceptable.
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more than one descriptor with the first byte",
            ));
        }
        let fd = fds.pop();
        match byte[0] {
            WITH_REGION if fd.is_some() => Ok(fd),
            NO_REGION if fd.is_none() => Ok(None),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected first byte {other:#x} on a Unix connection"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_passes_over_a_socket_and_both_sides_see_the_same_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut client, fd) = Region::create(1 << 16).unwrap();
        send_region(&a, Some(&fd)).unwrap();
        let received = recv_region(&b).unwrap().expect("a descriptor");
        let mut server = Region::map_received(&received).unwrap();
        assert_eq!(server.len(), 1 << 16);
        client.bytes_mut(100, 5).unwrap().copy_from_slice(b"hello");
        assert_eq!(server.bytes(100, 5).unwrap(), b"hello");
        server.bytes_mut(0, 2).unwrap().copy_from_slice(b"ok");
        assert_eq!(client.bytes(0, 2).unwrap(), b"ok");
        assert!(server.bytes((1 << 16) - 1, 2).is_none());
        assert!(server.bytes(u64::MAX, 1).is_none());
        // A region that could shrink under the server is refused.
        let fd =
            unsafe { OwnedFd::from_raw_fd(libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC)) };
        unsafe { libc::ftruncate(fd.as_raw_fd(), 4096) };
        assert!(Region::map_received(&fd).is_err());
        // Two descriptors at once are refused (and both closed).
        let (c, _) = Region::create(4096).unwrap();
        let (d, fd2) = Region::create(4096).unwrap();
        drop((c, d));
        send_byte_with_fds(&a, WITH_REGION, &[fd.as_raw_fd(), fd2.as_raw_fd()]).unwrap();
        assert!(recv_region(&b).is_err());
        // No region, and garbage.
        send_region(&a, None).unwrap();
        assert!(recv_region(&b).unwrap().is_none());
        use std::io::Write;
        (&a).write_all(b"x").unwrap();
        assert!(recv_region(&b).is_err());
    }
}
