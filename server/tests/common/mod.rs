//! Helpers shared by the server's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use serde_bytes::ByteBuf;
use xpupool_client::{Connection, Settings};
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
