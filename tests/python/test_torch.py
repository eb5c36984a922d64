"""The unmodified PyPI PyTorch wheel (CUDA build) through xpupool on the mock backend.

Run under `xpupool run --memory-limit 1GiB` with XPUPOOL_EXPECT_MEMORY_LIMIT set to the
limit in bytes (scripts/run-python-tests.sh does both). PyTorch's own kernels are
SASS-only, which the mock cannot run, so these tests exercise everything but kernels:
initialisation, device properties, the caching allocator, copies in every direction,
streams, events, pinned memory, cuBLAS start-up, out-of-memory and the error for a
kernel the server cannot run, the cudaMallocAsync allocator backend, expandable
segments (virtual memory management), CUDA graphs, and CUDA tensors shared between
processes by torch.multiprocessing (IPC).
"""

import os

import pytest
import torch

from conftest import LIMIT

pytestmark = pytest.mark.skipif(
    not os.environ.get("XPUPOOL_SERVER"),
    reason="run under `xpupool run` (XPUPOOL_SERVER is not set)",
)

CUDA = torch.device("cuda")
MIB = 1 << 20


def test_device_is_visible():
    assert torch.cuda.is_available()
    assert torch.cuda.device_count() == 1
    assert "xpupool" in torch.cuda.get_device_name(0)


def test_properties_report_the_memory_limit():
    props = torch.cuda.get_device_properties(0)
    assert (props.major, props.minor) == (9, 0)
    assert props.multi_processor_count > 0
    if LIMIT:
        assert props.total_memory == LIMIT


def test_mem_get_info_follows_allocations():
    free_before, total = torch.cuda.mem_get_info()
    if LIMIT:
        assert total == LIMIT
    block = torch.empty(64 * MIB, dtype=torch.uint8, device=CUDA)
    free_after, _ = torch.cuda.mem_get_info()
    assert free_after <= free_before - 64 * MIB
    del block
    torch.cuda.empty_cache()
    assert torch.cuda.mem_get_info()[0] >= free_after + 64 * MIB


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64, torch.bool, torch.complex64]
)
@pytest.mark.parametrize("count", [1, 1000, 1 << 20])
def test_round_trip(dtype, count):
    generator = torch.Generator().manual_seed(count)
    host = (torch.rand(count, generator=generator) * 100).to(dtype)
    assert torch.equal(host.to(CUDA).cpu(), host)


def test_round_trip_64_mib():
    host = torch.randn(16 * MIB, generator=torch.Generator().manual_seed(1))
    device = host.to(CUDA)
    assert device.nbytes == 64 * MIB
    assert torch.equal(device.cpu(), host)


def test_device_to_device_and_offset_views():
    host = torch.arange(10_000, dtype=torch.float32)
    device = host.to(CUDA)
    assert torch.equal(device.clone().cpu(), host)
    target = torch.empty(5_000, device=CUDA)
    target.copy_(device[5_000:])
    assert torch.equal(target.cpu(), host[5_000:])
    assert torch.equal(device[123:456].cpu(), host[123:456])
    device[:100] = host[100:200].to(CUDA)
    assert torch.equal(device[:100].cpu(), host[100:200])
    rows = torch.arange(64 * 32, dtype=torch.int32).reshape(64, 32)
    assert torch.equal(rows.to(CUDA)[10:20].cpu(), rows[10:20])


def test_non_blocking_pinned_copies_on_a_side_stream():
    host = torch.arange(1 << 18, dtype=torch.float32).pin_memory()
    back = torch.empty_like(host).pin_memory()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        device = host.to(CUDA, non_blocking=True)
        back.copy_(device, non_blocking=True)
    stream.synchronize()
    assert torch.equal(back, host)
    # Ordering across streams through an event.
    done = torch.cuda.Event()
    with torch.cuda.stream(stream):
        other = torch.full((4,), 7.0).to(CUDA, non_blocking=True)
        done.record(stream)
    torch.cuda.current_stream().wait_event(done)
    assert other.cpu().tolist() == [7.0] * 4


def test_events_time_work():
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    torch.randn(4 * MIB).to(CUDA)
    end.record()
    end.synchronize()
    assert end.query()
    assert start.elapsed_time(end) >= 0.0


def test_cublas_initialises():
    assert torch.cuda.current_blas_handle() != 0


def test_out_of_memory_is_pytorchs_error_and_recoverable():
    with pytest.raises(torch.cuda.OutOfMemoryError):
        torch.empty(LIMIT * 2 if LIMIT else 1 << 45, dtype=torch.uint8, device=CUDA)
    small = torch.ones(10).to(CUDA)
    assert small.cpu().sum().item() == 10


def test_a_kernel_the_mock_cannot_run_fails_cleanly_and_copies_still_work():
    values = torch.arange(100, dtype=torch.float32).to(CUDA)
    with pytest.raises(RuntimeError, match="no kernel image is available"):
        (values + 1).cpu()
    assert torch.equal(values.cpu(), torch.arange(100, dtype=torch.float32))
    assert torch.equal((torch.ones(3) * 2).to(CUDA).cpu(), torch.full((3,), 2.0))


ASYNC_ALLOCATOR = r"""
import torch
assert torch.cuda.memory.get_allocator_backend() == "cudaMallocAsync"
free0, _ = torch.cuda.mem_get_info()
used0 = torch.cuda.memory_allocated()
src = torch.arange(1 << 20, dtype=torch.float32)
x = src.cuda()
z = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
free1, _ = torch.cuda.mem_get_info()
used1 = torch.cuda.memory_allocated()
# The pool's figures (what memory_allocated reads) and the server's ledger (what
# mem_get_info reads) move by the same bytes.
assert used1 - used0 == (64 << 20) + (4 << 20), used1 - used0
assert free0 - free1 == used1 - used0, (free0 - free1, used1 - used0)
assert torch.equal(x.clone().cpu(), src)
del z
torch.cuda.synchronize()
free2, _ = torch.cuda.mem_get_info()
assert torch.cuda.memory_allocated() - used0 == 4 << 20
assert free0 - free2 == 4 << 20, free0 - free2
s = torch.cuda.Stream()
with torch.cuda.stream(s):
    w = torch.ones(1000).to("cuda", non_blocking=True)
    assert w.cpu().sum().item() == 1000
print("OK")
"""


def test_the_cuda_malloc_async_backend_allocates_copies_and_frees():
    # The allocator backend is chosen once per process: a child with its own.
    import subprocess
    import sys

    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="backend:cudaMallocAsync")
    out = subprocess.run([sys.executable, "-c", ASYNC_ALLOCATOR], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


def test_a_cuda_graph_captures_and_replays():
    # torch.cuda.graph: captured on a side stream (global mode), kept by the
    # server, replayed with new inputs. (Copies only: PyTorch's kernels are SASS.)
    n = 1 << 16
    src = torch.arange(n, dtype=torch.float32).to(CUDA)
    dst = torch.zeros(n, dtype=torch.float32, device=CUDA)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dst.copy_(src)
    assert torch.equal(dst.cpu(), torch.zeros(n)), "captured work ran during the capture"
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(dst.cpu(), torch.arange(n, dtype=torch.float32))
    src.copy_(torch.ones(n).to(CUDA))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(dst.cpu(), torch.ones(n))


EXPANDABLE = r"""
import torch
free0, _ = torch.cuda.mem_get_info()
src = torch.arange(1 << 20, dtype=torch.float32)
xs = [src.cuda() for _ in range(8)]            # 4 MiB each: a large segment that grows
big = torch.empty(96 << 20, dtype=torch.uint8, device="cuda")
reserved = torch.cuda.memory_reserved()
free1, _ = torch.cuda.mem_get_info()
# What the allocator has mapped is what the server's ledger charged.
assert reserved >= (96 << 20) + (32 << 20), reserved
assert free0 - free1 == reserved, (free0 - free1, reserved)
assert all(torch.equal(x.cpu(), src) for x in xs)
xs[0].copy_(xs[7])                              # device to device, inside the segment
y = torch.empty(8 << 20, dtype=torch.float32, device="cuda")
y.copy_(torch.arange(8 << 20, dtype=torch.float32))   # one copy across several granules
assert torch.equal(y[-4:].cpu(), torch.arange((8 << 20) - 4, 8 << 20, dtype=torch.float32))
del xs, big, y
torch.cuda.empty_cache()                        # unmaps and releases
free2, _ = torch.cuda.mem_get_info()
assert torch.cuda.memory_reserved() == 0
assert free2 == free0, (free0, free2)
print("OK", reserved)
"""


def test_expandable_segments_allocate_copy_and_free():
    # PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: the caching allocator
    # reserves addresses and maps physical memory into them as it grows.
    import subprocess
    import sys

    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    out = subprocess.run([sys.executable, "-c", EXPANDABLE], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


SHARING = r"""
import torch
import torch.multiprocessing as mp


def child(q, done):
    y = q.get()                                   # opened by cudaIpcOpenMemHandle
    y.copy_(torch.full((1000,), 7, dtype=torch.int64).cuda())   # written in place
    torch.cuda.synchronize()
    done.put(int(y[3:5].cpu().sum()))
    del y


if __name__ == "__main__":
    mp.set_start_method("spawn")
    q, done = mp.Queue(), mp.Queue()
    p = mp.Process(target=child, args=(q, done))
    p.start()
    x = torch.arange(1000).cuda()
    q.put(x)
    assert done.get(timeout=300) == 14
    p.join(timeout=300)
    assert p.exitcode == 0, p.exitcode
    assert torch.equal(x.cpu(), torch.full((1000,), 7, dtype=torch.int64)), x.cpu()[:5]
    torch.cuda.ipc_collect()
    print("OK")
"""


def test_torch_multiprocessing_shares_a_cuda_tensor(tmp_path):
    # A CUDA tensor put on a torch.multiprocessing queue travels as an IPC
    # handle (memory and event); the child writes it in place, the parent sees it.
    import subprocess
    import sys

    script = tmp_path / "sharing.py"
    script.write_text(SHARING)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


GRAPH_MEMORY = r"""
import torch
assert torch.cuda.memory.get_allocator_backend() == "cudaMallocAsync"
n = 1 << 16
src = torch.arange(n, dtype=torch.float32).cuda()
dst = torch.zeros_like(src)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    tmp = torch.empty_like(src)      # allocated in the capture: graph memory
    tmp.copy_(src)
    dst.copy_(tmp)
    del tmp
g.replay()
torch.cuda.synchronize()
assert torch.equal(dst.cpu(), torch.arange(n, dtype=torch.float32))
src.copy_(torch.ones(n).cuda())
g.replay()
torch.cuda.synchronize()
assert torch.equal(dst.cpu(), torch.ones(n))
del g
torch.cuda.synchronize()
print("OK")
"""


def test_a_cuda_graph_allocating_inside_its_capture_replays():
    # With the cudaMallocAsync backend, a tensor made inside torch.cuda.graph is
    # graph memory (allocation and free nodes), kept by the graph for every replay.
    import subprocess
    import sys

    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="backend:cudaMallocAsync")
    out = subprocess.run([sys.executable, "-c", GRAPH_MEMORY], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
