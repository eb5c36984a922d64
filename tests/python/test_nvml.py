"""End-to-end checks of xpupool's NVML stand-in (libnvidia-ml.so.1) through pynvml.

Run under `xpupool run` (which preloads the stand-in and sets XPUPOOL_SERVER...):

    xpupool run --memory-limit 1GiB -- python -m pytest tests/python

Set XPUPOOL_EXPECT_MEMORY_LIMIT to the limit in bytes (1073741824 above) to check
that NVML reports it as the device's total memory.
"""

import ctypes
import os
import re

import pytest

pynvml = pytest.importorskip("pynvml", reason="needs nvidia-ml-py")

pytestmark = pytest.mark.skipif(
    not os.environ.get("XPUPOOL_SERVER"),
    reason="run under `xpupool run` (XPUPOOL_SERVER is not set)",
)

UUID_RE = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


@pytest.fixture
def nvml():
    pynvml.nvmlInit()
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


@pytest.fixture
def handle(nvml):
    return nvml.nvmlDeviceGetHandleByIndex(0)


def test_the_library_is_xpupools():
    # What dlopen("libnvidia-ml.so.1") finds is xpupool's stand-in: its driver
    # version string names xpupool.
    lib = ctypes.CDLL("libnvidia-ml.so.1")
    assert lib.nvmlInit_v2() == 0
    try:
        buf = ctypes.create_string_buffer(80)
        assert lib.nvmlSystemGetDriverVersion(buf, 80) == 0
        assert buf.value.startswith(b"xpupool-"), buf.value
    finally:
        assert lib.nvmlShutdown() == 0


def test_device_count_and_name(nvml, handle):
    assert nvml.nvmlDeviceGetCount() == 1
    name = _text(nvml.nvmlDeviceGetName(handle))
    assert "xpupool" in name
    assert nvml.nvmlDeviceGetIndex(handle) == 0


def test_memory_is_the_tenant_limit(nvml, handle):
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    assert info.total > 0
    assert info.free + info.used == info.total
    v2 = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
    assert v2.total == info.total
    assert v2.free + v2.used + v2.reserved == v2.total
    expected = os.environ.get("XPUPOOL_EXPECT_MEMORY_LIMIT")
    if expected:
        assert info.total == int(expected)


def test_uuid(nvml, handle):
    uuid = _text(nvml.nvmlDeviceGetUUID(handle))
    assert UUID_RE.match(uuid), uuid
    same = nvml.nvmlDeviceGetHandleByUUID(uuid)
    assert nvml.nvmlDeviceGetIndex(same) == 0
    with pytest.raises(nvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000"
                                       if uuid != "GPU-00000000-0000-0000-0000-000000000000"
                                       else "GPU-11111111-1111-1111-1111-111111111111")


def test_pci_info(nvml, handle):
    pci = nvml.nvmlDeviceGetPciInfo(handle)
    bus_id = _text(pci.busId)
    assert re.match(r"^[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.0$", bus_id), bus_id
    assert bus_id == "%08X:%02X:%02X.0" % (pci.domain, pci.bus, pci.device)
    assert _text(pci.busIdLegacy) == "%04X:%02X:%02X.0" % (pci.domain, pci.bus, pci.device)
    assert pci.pciDeviceId & 0xFFFF == 0x10DE
    same = nvml.nvmlDeviceGetHandleByPciBusId(bus_id)
    assert nvml.nvmlDeviceGetIndex(same) == 0


def test_versions_and_capability(nvml, handle):
    driver = _text(nvml.nvmlSystemGetDriverVersion())
    assert driver.startswith("xpupool-") and driver.isprintable()
    cuda = nvml.nvmlSystemGetCudaDriverVersion()
    assert cuda >= 12000
    assert nvml.nvmlSystemGetCudaDriverVersion_v2() == cuda
    assert driver == "xpupool-%d.%d" % (cuda // 1000, cuda % 1000 // 10)
    assert _text(nvml.nvmlSystemGetNVMLVersion())
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    assert major >= 1 and minor >= 0
    assert nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM) > 0
    assert nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM) > 0
    util = nvml.nvmlDeviceGetUtilizationRates(handle)
    # Measured by the server's scheduler; this process runs no kernel now.
    assert 0 <= util.gpu <= 100 and 0 <= util.memory <= 100


def test_running_processes(nvml, handle):
    torch = pytest.importorskip("torch")
    # A process is listed once its session holds device memory, with what the
    # server's ledger charges it.
    held = torch.empty(3 << 20, dtype=torch.uint8, device="cuda")
    procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    assert [p.pid for p in procs] == [os.getpid()]
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    assert procs[0].usedGpuMemory == info.used >= held.numel()
    util = nvml.nvmlDeviceGetUtilizationRates(handle)
    assert util.memory == info.used * 100 // info.total
    assert nvml.nvmlDeviceGetGraphicsRunningProcesses(handle) == []


def test_unsupported_calls_answer_not_supported(nvml, handle):
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetPowerUsage(handle)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetSerial(handle)


def test_shutdown_is_reference_counted():
    pynvml.nvmlInit()
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()
    assert pynvml.nvmlDeviceGetCount() == 1
    # Other code in this process (PyTorch) may hold initialisations of its own:
    # undo them all, check the library is then uninitialised, and restore them.
    shutdowns = 0
    while True:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError_Uninitialized:
            break
        shutdowns += 1
        assert shutdowns < 1000
    assert shutdowns >= 1
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    for _ in range(shutdowns - 1):
        pynvml.nvmlInit()
