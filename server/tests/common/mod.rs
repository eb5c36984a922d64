//! Helpers shared by the server's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use serde_bytes::ByteBuf;
use xpupool_client::{Connection, Settings};
use xpupool_protocol::api::LaunchDims;
use xpupool_protocol::{code, Calls};
use xpupool_server::embedded::EmbeddedServer;

/// `out[i] = i * k` for i < n, and a module variable; hand-written PTX.
pub(crate) const SCALE_PTX: &str = r#"
.version 8.0
.target sm_90
.address_size 64

.visible .global .align 4 .u32 counter = 7;

.visible .entry scale(.param .u64 out, .param .u32 n, .param .u32 k)
{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<5>;
    ld.param.u64 %rd1, [out];
    ld.param.u32 %r1, [n];
    ld.param.u32 %r2, [k];
    mov.u32 %r3, %ctaid.x;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %tid.x;
    mad.lo.s32 %r6, %r3, %r4, %r5;
    setp.ge.u32 %p1, %r6, %r1;
    @%p1 bra DONE;
    mul.lo.s32 %r7, %r6, %r2;
    cvta.to.global.u64 %rd2, %rd1;
    mul.wide.u32 %rd3, %r6, 4;
    add.s64 %rd4, %rd2, %rd3;
    st.global.u32 [%rd4], %r7;
DONE:
    ret;
}
"#;

/// Client settings for `server`, presenting `token`.
pub(crate) fn settings(server: &EmbeddedServer, token: &str) -> Settings {
    Settings {
        server: server.addr().to_string(),
        cert: Some(server.cert_path().to_string_lossy().into_owned()),
        fingerprint: None,
        token: token.to_owned(),
        quic_only: true,
    }
}

/// A client of `server` with its tenant's token.
pub(crate) fn connect(server: &EmbeddedServer) -> Connection {
    Connection::open(&settings(server, server.token())).expect("client connects")
}

/// A PTX module image as it travels.
pub(crate) fn ptx_image(text: &str) -> ByteBuf {
    ByteBuf::from(xpupool_fatbin::Image::Ptx(text.to_owned()).to_wire())
}

/// The packed parameters of `scale(out, n, k)`.
pub(crate) fn params(out: u64, n: u32, k: u32) -> ByteBuf {
    let mut bytes = out.to_le_bytes().to_vec();
    bytes.extend_from_slice(&n.to_le_bytes());
    bytes.extend_from_slice(&k.to_le_bytes());
    ByteBuf::from(bytes)
}

/// Session `b` can name none of `a`'s memory, streams, events, modules or kernels,
/// and `a`'s own ranges are checked: the same on every backend.
pub(crate) fn assert_sessions_isolated(a: &Connection, b: &Connection) {
    let mine = a.mem_alloc(0, 4096).unwrap();
    assert_eq!(
        b.memcpy_htod(mine, ByteBuf::from(vec![1; 16]), 0)
            .unwrap_err()
            .code,
        code::INVALID_VALUE
    );
    assert_eq!(
        b.memcpy_dtoh(mine, 16, 0).unwrap_err().code,
        code::INVALID_VALUE
    );
    let theirs = b.mem_alloc(0, 64).unwrap();
    assert_eq!(
        b.memcpy_dtod(theirs, mine, 16, 0).unwrap_err().code,
        code::INVALID_VALUE
    );
    assert_eq!(
        b.memset(mine, 0, 1, 16, 0).unwrap_err().code,
        code::INVALID_VALUE
    );
    assert_eq!(b.mem_free(mine).unwrap_err().code, code::INVALID_VALUE);
    let stream = a.stream_create(0, 0, 0).unwrap();
    let event = a.event_create(0, 0).unwrap();
    assert_eq!(
        b.stream_synchronize(stream).unwrap_err().code,
        code::INVALID_HANDLE
    );
    assert_eq!(
        b.event_record(event, 0).unwrap_err().code,
        code::INVALID_HANDLE
    );
    assert_eq!(
        b.memcpy_dtoh(theirs, 16, stream).unwrap_err().code,
        code::INVALID_HANDLE,
        "another session's stream"
    );
    let module = a.module_load(0, ptx_image(SCALE_PTX)).unwrap();
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [1, 1, 1],
        shared_bytes: 0,
    };
    assert_eq!(
        b.launch_kernel(module.functions[0].handle, dims, 0, params(theirs, 1, 1))
            .unwrap_err()
            .code,
        code::INVALID_HANDLE
    );
    assert_eq!(
        b.module_get_global(module.handle, "counter".into())
            .unwrap_err()
            .code,
        code::INVALID_HANDLE
    );
    assert_eq!(
        a.memcpy_dtoh(mine + 4000, 200, 0).unwrap_err().code,
        code::INVALID_VALUE,
        "read past the end"
    );
    assert_eq!(
        a.memcpy_dtoh(u64::MAX - 4, 16, 0).unwrap_err().code,
        code::INVALID_VALUE,
        "a range that wraps"
    );
    a.mem_free(mine).unwrap();
    assert_eq!(
        a.mem_free(mine).unwrap_err().code,
        code::INVALID_VALUE,
        "double free"
    );
}

/// A client whose tenant may hold 8 MiB sees that as the device's memory, gets
/// OUT_OF_MEMORY past it however much the device has, and can use all of it.
/// `device_holds(bytes, why)` checks what the backend's device holds.
pub(crate) fn assert_memory_limit_of_8_mib(c: &Connection, device_holds: &dyn Fn(u64, &str)) {
    assert_eq!(
        c.welcome.devices[0].total_memory,
        8 << 20,
        "the device reports the limit"
    );
    assert_eq!(c.mem_get_info(0).unwrap(), (8 << 20, 8 << 20));
    let a = c.mem_alloc(0, 6 << 20).unwrap();
    assert_eq!(
        c.mem_alloc(0, 4 << 20).unwrap_err().code,
        code::OUT_OF_MEMORY,
        "past the limit, though the device has room"
    );
    assert_eq!(c.mem_get_info(0).unwrap(), (2 << 20, 8 << 20));
    device_holds(6 << 20, "a refused allocation never reaches the device");
    c.mem_free(a).unwrap();
    c.mem_alloc(0, 8 << 20).unwrap();
    device_holds(8 << 20, "the whole limit can be used");
}
