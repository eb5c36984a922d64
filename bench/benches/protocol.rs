//! Micro-benchmarks of the wire layer: encoding and decoding typical requests, and one
//! synchronous call round trip through a real server on loopback (QUIC + TLS, mock
//! backend). Compare runs as ratios within one run, never as absolute numbers.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_bytes::ByteBuf;
use xpupool_protocol::api::LaunchDims;
use xpupool_protocol::{frame, Calls, Request};

fn launch_request() -> Request {
    Request::LaunchKernel {
        function: 0x4655_0000_0000_0007,
        dims: LaunchDims {
            grid: [256, 1, 1],
            block: [256, 1, 1],
            shared_bytes: 0,
        },
        stream: 2,
        params: ByteBuf::from(vec![7u8; 64]),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let launch = launch_request();
    group.bench_function("encode launch (64 B params)", |b| {
        b.iter(|| frame::encode(black_box(&launch)).unwrap())
    });
    let bytes = frame::encode(&launch).unwrap();
    group.bench_function("decode launch (64 B params)", |b| {
        b.iter(|| frame::decode::<Request>(black_box(&bytes[4..])).unwrap())
    });
    let copy = Request::MemcpyHtoD {
        dst: 0x2000_0000_0000,
        data: ByteBuf::from(vec![1u8; 1 << 20]),
        stream: 0,
    };
    group.throughput(Throughput::Bytes(1 << 20));
    group.bench_function("encode 1 MiB copy", |b| {
        b.iter(|| frame::encode(black_box(&copy)).unwrap())
    });
    let bytes = frame::encode(&copy).unwrap();
    group.bench_function("decode 1 MiB copy", |b| {
        b.iter(|| frame::decode::<Request>(black_box(&bytes[4..])).unwrap())
    });
    group.finish();
}

fn round_trip(c: &mut Criterion) {
    let backend = Arc::new(xpupool_server::MockBackend::new(1 << 30));
    let server = xpupool_server::embedded::EmbeddedServer::start(backend).unwrap();
    let settings = xpupool_client::Settings {
        server: server.addr().to_string(),
        cert: Some(server.cert_path().to_string_lossy().into_owned()),
        fingerprint: None,
        token: server.token().to_owned(),
        quic_only: true,
    };
    let conn = xpupool_client::Connection::open(&settings).unwrap();
    let mut group = c.benchmark_group("round trip (loopback QUIC, mock)");
    group.bench_function("synchronize", |b| b.iter(|| conn.synchronize().unwrap()));
    let dst = conn.mem_alloc(0, 1 << 20).unwrap();
    group.throughput(Throughput::Bytes(1 << 20));
    group.bench_function("1 MiB host-to-device copy", |b| {
        b.iter(|| {
            conn.memcpy_htod(dst, ByteBuf::from(vec![3u8; 1 << 20]), 0)
                .unwrap()
        })
    });
    group.finish();
    conn.close();
}

criterion_group!(benches, codec, round_trip);
criterion_main!(benches);
