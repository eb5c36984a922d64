"""The CANN libraries xpupool stands in for, as a loader and torch_npu's lookups see
them: each loads with RTLD_NOW, exports every function torch_npu imports (so
`import torch_npu` resolves), finds the functions torch_npu looks up by handle,
and a function the stand-in does not have is NULL there, as it is in a CANN
release without it. xpupool run points ASCEND_HOME_PATH at their folder."""

import ctypes
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ACL = Path(os.environ["ASCEND_HOME_PATH"])
LIBRARIES = ["libascendcl.so", "libacl_rt.so", "libruntime.so", "libhccl.so", "libopapi.so",
             "libnnopbase.so", "libcust_opapi.so", "libacl_op_compiler.so", "libge_runner.so",
             "libgraph.so", "libacl_tdt_channel.so", "libascend_hal.so", "libdcmi.so",
             "libmsprofiler.so", "libprofapi.so"]


def table(name):
    rows = [l.split("\t") for l in (ROOT / "vendor-headers" / name).read_text().splitlines()
            if not l.startswith("#")]
    return [r[0] for r in rows[1:]]


@pytest.mark.parametrize("name", LIBRARIES)
def test_each_library_loads_with_rtld_now_under_its_soname(name):
    lib = ctypes.CDLL(str(ACL / name), mode=os.RTLD_NOW)
    assert lib.aclrtGetDeviceCount  # every one reaches the one core


def test_every_function_torch_npu_imports_is_exported():
    lib = ctypes.CDLL(str(ACL / "libascendcl.so"), mode=os.RTLD_NOW)
    names = table("acl-symbols-torch_npu-2.14.0.tsv")
    assert len(names) == 103
    missing = [n for n in names if not hasattr(lib, n)]
    assert not missing, missing


def test_every_operator_of_the_header_table_has_both_phases_in_libopapi():
    lib = ctypes.CDLL(str(ACL / "libopapi.so"), mode=os.RTLD_LAZY)
    ops = table("aclnn-ops.tsv")
    assert len(ops) > 700
    missing = [op for op in ops if not (hasattr(lib, op + "GetWorkspaceSize") and hasattr(lib, op))]
    assert not missing, missing[:10]


@pytest.mark.parametrize("library, name", [
    ("libascendcl.so", "aclrtSynchronizeDeviceWithTimeout"),
    ("libascendcl.so", "aclrtSetDeviceSatMode"),
    ("libascendcl.so", "aclrtGetDeviceInfo"),
    ("libascendcl.so", "aclrtMemsetAsync"),
    ("libacl_op_compiler.so", "aclSetCompileopt"),
    ("libopapi.so", "aclCreateTensor"),
    ("libopapi.so", "aclDestroyTensorList"),
    ("libopapi.so", "aclnnAddGetWorkspaceSize"),
])
def test_functions_torch_npu_looks_up_by_handle_are_found(library, name):
    assert hasattr(ctypes.CDLL(str(ACL / library), mode=os.RTLD_LAZY), name)


@pytest.mark.parametrize("library, name", [
    ("libascendcl.so", "aclmdlRICaptureBegin"),
    ("libhccl.so", "HcclSend"),
    ("libopapi.so", "aclnnNoSuchOperatorGetWorkspaceSize"),
])
def test_a_function_the_stand_in_lacks_is_null(library, name):
    lib = ctypes.CDLL(str(ACL / library), mode=os.RTLD_LAZY)
    with pytest.raises(AttributeError):
        getattr(lib, name)


def test_an_unimplemented_import_answers_not_supported_and_says_why():
    lib = ctypes.CDLL(str(ACL / "libascendcl.so"), mode=os.RTLD_NOW)
    assert lib.aclmdlInitDump() == 200001  # ACL_ERROR_API_NOT_SUPPORT
    lib.aclGetRecentErrMsg.restype = ctypes.c_char_p
    assert b"aclmdlInitDump is not implemented" in lib.aclGetRecentErrMsg()


def test_app_log_lines_are_formatted_and_errors_said():
    """aclAppLog(level, func, file, line, fmt, ...): torch_npu's log lines, C
    variadic calls, come out formatted; errors are said on stderr, lower levels
    dropped, as CANN's log level hides them."""
    import subprocess
    import sys
    code = (
        "import ctypes, os\n"
        "lib = ctypes.CDLL(os.path.join(os.environ['ASCEND_HOME_PATH'], 'libascendcl.so'))\n"
        "lib.aclAppLog(3, b'f', b'op.cpp', 12, b'value %d and %s (%.1f)', 42, b'text', ctypes.c_double(2.5))\n"
        "lib.aclAppLog(1, b'f', b'op.cpp', 13, b'quiet %d', 1)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "op.cpp:12: value 42 and text (2.5)" in out.stderr, out.stderr
    assert "quiet" not in out.stderr


def test_hostile_descriptors_are_refused_not_followed():
    lib = ctypes.CDLL(str(ACL / "libopapi.so"), mode=os.RTLD_NOW)
    lib.aclCreateTensor.restype = ctypes.c_void_p
    lib.aclCreateIntArray.restype = ctypes.c_void_p
    dims = (ctypes.c_int64 * 2)(4, 4)
    # More dimensions than CANN allows, a negative one, an array too long: no descriptor.
    assert lib.aclCreateTensor(dims, ctypes.c_uint64(129), 0, None, ctypes.c_int64(0), 2, dims,
                               ctypes.c_uint64(2), ctypes.c_void_p(0x1000)) is None
    bad = (ctypes.c_int64 * 2)(4, -1)
    assert lib.aclCreateTensor(bad, ctypes.c_uint64(2), 0, None, ctypes.c_int64(0), 2, bad,
                               ctypes.c_uint64(2), ctypes.c_void_p(0x1000)) is None
    assert lib.aclCreateIntArray(dims, ctypes.c_uint64(1 << 40)) is None
    # A pointer that is no descriptor of the stand-in's is refused, not read.
    ws, ex = ctypes.c_uint64(), ctypes.c_void_p()
    status = lib.aclnnReluGetWorkspaceSize(ctypes.c_void_p(0xdead0), ctypes.c_void_p(0xdead8),
                                           ctypes.byref(ws), ctypes.byref(ex))
    assert status == 161002  # ACLNN_ERR_PARAM_INVALID
    assert lib.aclDestroyTensor(ctypes.c_void_p(0xdead0)) == 161002


def test_an_operator_over_memory_that_is_not_the_processes_is_refused_at_its_first_phase():
    """The server checks every tensor's reach (storage and view) against the
    session's allocations before an operator is prepared: a tensor over someone
    else's memory, or one whose strides reach past its allocation, is refused,
    on the mock as through the acl backend."""
    lib = ctypes.CDLL(str(ACL / "libopapi.so"), mode=os.RTLD_NOW)
    lib.aclCreateTensor.restype = ctypes.c_void_p
    lib.aclGetRecentErrMsg.restype = ctypes.c_char_p
    assert lib.aclInit(None) in (0, 100002)  # or ACL_ERROR_REPEAT_INITIALIZE
    assert lib.aclrtSetDevice(0) == 0
    memory = ctypes.c_void_p()
    assert lib.aclrtMalloc(ctypes.byref(memory), ctypes.c_size_t(64), 0) == 0
    dims = (ctypes.c_int64 * 2)(4, 4)

    def tensor(strides, data):
        strides = (ctypes.c_int64 * 2)(*strides)
        t = lib.aclCreateTensor(dims, ctypes.c_uint64(2), 0, strides, ctypes.c_int64(0), 2, dims,
                                ctypes.c_uint64(2), ctypes.c_void_p(data))
        assert t is not None
        return ctypes.c_void_p(t)

    def relu(x, y):
        ws, ex = ctypes.c_uint64(), ctypes.c_void_p()
        status = lib.aclnnReluGetWorkspaceSize(x, y, ctypes.byref(ws), ctypes.byref(ex))
        return status, ex

    ok = tensor((4, 1), memory.value)
    status, executor = relu(ok, ok)
    assert status == 0 and executor.value
    assert lib.aclDestroyAclOpExecutor(executor) == 0
    elsewhere = tensor((4, 1), memory.value + (1 << 30))
    reaching = tensor((8, 1), memory.value)  # 4x4 floats 8 apart: 112 bytes of 64
    for bad in (elsewhere, reaching):
        status, _ = relu(bad, ok)
        assert status != 0
        assert b"not inside" in lib.aclGetRecentErrMsg() or b"allocat" in lib.aclGetRecentErrMsg()
    for t in (ok, elsewhere, reaching):
        assert lib.aclDestroyTensor(t) == 0
    assert lib.aclrtFree(memory) == 0


def test_callbacks_run_in_stream_order_on_the_subscribed_thread():
    """aclrtLaunchCallback queues a callback for the thread subscribed to the
    stream, which runs it from aclrtProcessReport once the stream's work before it
    is done, in launch order. aclrtLaunchHostFunc runs its function before it
    returns, after the stream's work."""
    import threading
    import time
    lib = ctypes.CDLL(str(ACL / "libascendcl.so"), mode=os.RTLD_NOW)
    assert lib.aclInit(None) in (0, 100002)
    assert lib.aclrtSetDevice(0) == 0
    stream = ctypes.c_void_p()
    assert lib.aclrtCreateStream(ctypes.byref(stream)) == 0
    ran = []
    CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    callback = CALLBACK(lambda data: ran.append((data, threading.get_ident())))
    lib.aclrtLaunchCallback.argtypes = [CALLBACK, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.aclrtLaunchHostFunc.argtypes = [ctypes.c_void_p, CALLBACK, ctypes.c_void_p]
    lib.aclrtSubscribeReport.argtypes = [ctypes.c_uint64, ctypes.c_void_p]
    lib.aclrtUnSubscribeReport.argtypes = [ctypes.c_uint64, ctypes.c_void_p]
    # Refused: no subscribed thread, a block type ACL lacks, a zero timeout.
    assert lib.aclrtLaunchCallback(callback, None, 0, stream) == 100000
    assert lib.aclrtProcessReport(0) == 100000
    assert lib.aclrtProcessReport(20) == 507012  # ACL_ERROR_RT_REPORT_TIMEOUT
    stop = threading.Event()

    def report():
        while not stop.is_set():
            assert lib.aclrtProcessReport(50) in (0, 507012)

    thread = threading.Thread(target=report)
    thread.start()
    try:
        assert lib.aclrtSubscribeReport(thread.ident, stream) == 0
        assert lib.aclrtLaunchCallback(callback, None, 2, stream) == 100000
        memory = ctypes.c_void_p()
        assert lib.aclrtMalloc(ctypes.byref(memory), ctypes.c_size_t(1 << 20), 0) == 0
        assert lib.aclrtMemsetAsync(memory, ctypes.c_size_t(1 << 20), 7, ctypes.c_size_t(1 << 20),
                                    stream) == 0
        assert lib.aclrtLaunchCallback(callback, ctypes.c_void_p(1), 0, stream) == 0
        assert lib.aclrtLaunchCallback(callback, ctypes.c_void_p(2), 1, stream) == 0
        assert lib.aclrtSynchronizeStream(stream) == 0
        deadline = time.monotonic() + 10
        while len(ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [d for d, _ in ran] == [1, 2], "both ran, in launch order"
        assert all(t == thread.ident for _, t in ran), "on the subscribed thread"
        assert lib.aclrtLaunchHostFunc(stream, callback, ctypes.c_void_p(3)) == 0
        assert ran[-1] == (3, threading.get_ident()), "a host function runs before its launch returns"
        assert lib.aclrtUnSubscribeReport(thread.ident, stream) == 0
        assert lib.aclrtFree(memory) == 0
    finally:
        stop.set()
        thread.join(timeout=10)
    assert lib.aclrtDestroyStream(stream) == 0


class ChipInfoV2(ctypes.Structure):
    _fields_ = [("chip_type", ctypes.c_char * 32), ("chip_name", ctypes.c_char * 32),
                ("chip_ver", ctypes.c_char * 32), ("aicore_cnt", ctypes.c_uint),
                ("npu_name", ctypes.c_char * 32)]


class HbmInfo(ctypes.Structure):
    _fields_ = [("memory_size", ctypes.c_ulonglong), ("freq", ctypes.c_uint),
                ("memory_usage", ctypes.c_ulonglong), ("temp", ctypes.c_int),
                ("bandwith_util_rate", ctypes.c_uint)]


class ProcMemInfo(ctypes.Structure):
    _fields_ = [("proc_id", ctypes.c_int), ("proc_mem_usage", ctypes.c_ulong)]


def test_dcmi_sees_the_pooled_device_with_the_quota_as_its_memory():
    """libdcmi (what npu-smi, npu-exporter and torch_npu's CPU binding call): one
    card per pooled device, a 910B3 chip, the tenant's quota as its HBM, this
    process among its users; what the pool does not measure is not supported."""
    limit = int(os.environ["XPUPOOL_EXPECT_MEMORY_LIMIT"])
    dcmi = ctypes.CDLL(str(ACL / "libdcmi.so"), mode=os.RTLD_NOW)
    acl = ctypes.CDLL(str(ACL / "libascendcl.so"), mode=os.RTLD_NOW)
    assert dcmi.dcmi_init() == 0
    count, cards = ctypes.c_int(), (ctypes.c_int * 64)()
    assert dcmi.dcmi_get_card_num_list(ctypes.byref(count), cards, 64) == 0
    devices = int(os.environ.get("XPUPOOL_EXPECT_DEVICES", "1"))
    assert (count.value, list(cards[:devices])) == (devices, list(range(devices)))
    n = ctypes.c_int()
    assert dcmi.dcmi_get_device_num_in_card(0, ctypes.byref(n)) == 0 and n.value == 1
    chip = ChipInfoV2()
    assert dcmi.dcmi_get_device_chip_info_v2(0, 0, ctypes.byref(chip)) == 0
    assert (chip.chip_type, chip.chip_name, chip.aicore_cnt) == (b"Ascend", b"910B3", 20)
    # The quota is its memory, and what this process holds is in use.
    assert acl.aclInit(None) in (0, 100002) and acl.aclrtSetDevice(0) == 0
    memory = ctypes.c_void_p()
    assert acl.aclrtMalloc(ctypes.byref(memory), ctypes.c_size_t(64 << 20), 0) == 0
    hbm = HbmInfo()
    assert dcmi.dcmi_get_device_hbm_info(0, 0, ctypes.byref(hbm)) == 0
    assert hbm.memory_size == limit >> 20 and 64 <= hbm.memory_usage <= hbm.memory_size
    procs, k = (ProcMemInfo * 32)(), ctypes.c_int(32)
    assert dcmi.dcmi_get_device_resource_info(0, 0, procs, ctypes.byref(k)) == 0
    mine = [p.proc_mem_usage for p in procs[:k.value] if p.proc_id == os.getpid()]
    assert mine and mine[0] >= 64 << 20, [(p.proc_id, p.proc_mem_usage) for p in procs[:k.value]]
    rate = ctypes.c_uint(1000)
    assert dcmi.dcmi_get_device_utilization_rate(0, 0, 2, ctypes.byref(rate)) == 0 and rate.value <= 100
    assert dcmi.dcmi_get_device_utilization_rate(0, 0, 6, ctypes.byref(rate)) == 0
    assert rate.value == hbm.memory_usage * 100 // hbm.memory_size or rate.value >= 0
    # The die id is the device's UUID; the CPUs are all of this machine's.
    uuid, die = (ctypes.c_ubyte * 16)(), (ctypes.c_uint * 5)()
    assert acl.aclrtDeviceGetUuid(0, uuid) == 0
    assert dcmi.dcmi_get_device_die_v2(0, 0, 1, die) == 0
    assert bytes(uuid) == b"".join(w.to_bytes(4, "big") for w in die[:4])
    cpus, length = ctypes.create_string_buffer(32), ctypes.c_int()
    assert dcmi.dcmi_get_affinity_cpu_info_by_device_id(0, 0, cpus, ctypes.byref(length)) == 0
    assert cpus.value == f"0-{os.cpu_count() - 1}".encode() or cpus.value.startswith(b"0-")
    # Not measured, not there: DCMI_ERR_CODE_NOT_SUPPORT, INVALID_DEVICE_ID.
    t = ctypes.c_int()
    assert dcmi.dcmi_get_device_temperature(0, 0, ctypes.byref(t)) == -8255
    assert dcmi.dcmi_get_device_utilization_rate(0, 0, 1, ctypes.byref(rate)) == -8255
    assert dcmi.dcmi_get_device_hbm_info(5, 0, ctypes.byref(hbm)) == -8007
    assert dcmi.dcmi_get_device_hbm_info(0, 1, ctypes.byref(hbm)) == -8007
    assert dcmi.dcmi_get_device_hbm_info(0, 0, None) == -8001
    # torch_npu moves to DCMI's second API if any of it is exported.
    with pytest.raises(AttributeError):
        dcmi.dcmiv2_init
    assert acl.aclrtFree(memory) == 0


def test_npu_smi_info_shows_the_pooled_device():
    """`npu-smi info` (on PATH under xpupool run) prints the pooled 910B3, its
    quota as HBM, and this process among those using it."""
    import shutil
    import subprocess
    limit = int(os.environ["XPUPOOL_EXPECT_MEMORY_LIMIT"])
    smi = shutil.which("npu-smi")
    assert smi and Path(smi).parent == ACL / "bin", smi
    acl = ctypes.CDLL(str(ACL / "libascendcl.so"), mode=os.RTLD_NOW)
    assert acl.aclInit(None) in (0, 100002) and acl.aclrtSetDevice(0) == 0
    memory = ctypes.c_void_p()
    assert acl.aclrtMalloc(ctypes.byref(memory), ctypes.c_size_t(8 << 20), 0) == 0
    try:
        out = subprocess.run([smi, "info"], capture_output=True, text=True, timeout=60)
    finally:
        assert acl.aclrtFree(memory) == 0
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any("910B3" in l and "| OK" in l for l in lines), out.stdout
    assert any(f"/ {limit >> 20}" in l for l in lines), out.stdout
    assert any(f"| {os.getpid()} " in l for l in lines), out.stdout
    assert subprocess.run([smi, "set"], capture_output=True).returncode == 2


def test_hccl_makes_one_rank_communicators_and_refuses_more():
    lib = ctypes.CDLL(str(ACL / "libhccl.so"), mode=os.RTLD_NOW)
    root = ctypes.create_string_buffer(4108)
    assert lib.HcclGetRootInfo(root) == 0
    comm = ctypes.c_void_p()
    assert lib.HcclCommInitRootInfo(2, root, 0, ctypes.byref(comm)) == 5  # HCCL_E_NOT_SUPPORT
    assert lib.HcclCommInitRootInfo(1, root, 0, ctypes.byref(comm)) == 0
    size = ctypes.c_uint32()
    assert lib.HcclGetRankSize(comm, ctypes.byref(size)) == 0 and size.value == 1
    assert lib.HcclCommDestroy(comm) == 0
    assert lib.HcclCommDestroy(comm) == 1  # HCCL_E_PARA: not a communicator any more


def ai_core_object(kernels):
    """A minimal AI Core ELF object (e_machine 0x1029) whose global functions are
    `kernels`, with a local function that is not one."""
    import struct
    strtab, symtab = b"\0", bytearray(24)
    for name, info in [("local_helper", 0x02)] + [(k, 0x12) for k in kernels]:
        symtab += struct.pack("<IBBHQQ", len(strtab), info, 0, 3, 0, 0)
        strtab += name.encode() + b"\0"
    out = bytearray(64)
    sym_at = len(out); out += symtab
    str_at = len(out); out += strtab
    text_at = len(out); out += bytes(32)
    shoff = len(out)

    def header(kind, at, size, link):
        return struct.pack("<IIQQQQIIQQ", 0, kind, 0, 0, at, size, link, 0, 0, 24)
    out += bytes(64) + header(2, sym_at, len(symtab), 2) + header(3, str_at, len(strtab), 0) \
        + header(1, text_at, 32, 0)
    out[0:20] = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HH", 2, 0x1029)
    out[0x28:0x30] = struct.pack("<Q", shoff)
    out[0x3a:0x3e] = struct.pack("<HH", 64, 4)
    return bytes(out)


class PlaceHolder(ctypes.Structure):
    _fields_ = [("addrOffset", ctypes.c_uint32), ("dataOffset", ctypes.c_uint32)]


class DevBinary(ctypes.Structure):
    _fields_ = [("magic", ctypes.c_uint32), ("version", ctypes.c_uint32),
                ("data", ctypes.c_void_p), ("length", ctypes.c_uint64)]


def test_kernel_binaries_load_by_name_and_launches_are_checked_and_refused_by_name():
    """Kernels outside aclnn: an AI Core binary loads (charged to the tenant, as
    the device holds it), its kernels are found by name (aclrtBinaryGetFunction,
    rtFunctionRegister), and a launch's argument string and placeholders are
    checked; one that passes reaches a device that cannot run AI Core code (the
    stand-in device, under CANN or not) and is refused naming the kernel, never a
    silent success. Unloading refunds the memory and ends the handles."""
    lib = ctypes.CDLL(str(ACL / "libascendcl.so"), mode=os.RTLD_NOW)
    lib.aclGetRecentErrMsg.restype = ctypes.c_char_p
    assert lib.aclInit(None) in (0, 100002) and lib.aclrtSetDevice(0) == 0
    stream = ctypes.c_void_p()
    assert lib.aclrtCreateStream(ctypes.byref(stream)) == 0
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    assert lib.aclrtGetMemInfo(1, ctypes.byref(free), ctypes.byref(total)) == 0
    free_before = free.value
    image = ai_core_object(["add_custom", "dvm_mix_aic"])
    binary = ctypes.c_void_p()
    assert lib.aclrtBinaryLoadFromData(image, ctypes.c_size_t(len(image)), None,
                                       ctypes.byref(binary)) == 0
    assert lib.aclrtGetMemInfo(1, ctypes.byref(free), ctypes.byref(total)) == 0
    assert free.value < free_before, "the loaded binary is charged"
    function = ctypes.c_void_p()
    assert lib.aclrtBinaryGetFunction(binary, b"add_custom", ctypes.byref(function)) == 0
    for missing in (b"no_such_kernel", b"local_helper"):
        assert lib.aclrtBinaryGetFunction(binary, missing, ctypes.byref(ctypes.c_void_p())) == 107000
        assert b"has no kernel" in lib.aclGetRecentErrMsg()

    lib.aclrtLaunchKernelWithHostArgs.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    args = ctypes.create_string_buffer(48)

    def launch(blocks, holders, fn=function, size=48, cfg=None):
        array = (PlaceHolder * max(len(holders), 1))(*[PlaceHolder(a, d) for a, d in holders])
        status = lib.aclrtLaunchKernelWithHostArgs(fn, blocks, stream, cfg, args, size,
                                                   array if holders else None, len(holders))
        if status == 0:  # posted: the device's answer comes at the synchronisation
            status = lib.aclrtSynchronizeStream(stream)
        return status, lib.aclGetRecentErrMsg() or b""

    # Refused before anything is sent.
    status, message = launch(8, [(44, 0)])
    assert status == 107000 and b"placeholder at byte 44" in message, (status, message)
    assert launch(8, [(0, 48)])[0] == 107000
    assert launch(0, [])[0] == 107000
    assert launch(8, [], size=(1 << 20) + 1)[0] == 107000
    assert launch(8, [], fn=ctypes.c_void_p(0xdead))[0] == 107017
    attrs = (ctypes.c_uint32 * 5)(1, 1, 0, 0, 0)
    cfg = (ctypes.c_void_p * 2)(ctypes.addressof(attrs), 1)
    status, message = launch(8, [], cfg=cfg)
    assert status == 207000 and b"launch attributes" in message
    # One that passes every check: the device that cannot run it names the kernel.
    status, message = launch(8, [(0, 16), (8, 40)])
    assert status != 0 and b"add_custom" in message and b"cannot run Ascend AI Core code" in message, \
        (status, message)
    if os.environ.get("XPUPOOL_EXPECT_ACL_BACKEND"):
        # Through the acl backend, CANN resolved the kernel and it was launched there.
        assert b"aclrtLaunchKernelWithHostArgs failed" in message, message
    assert lib.aclrtSynchronizeStream(stream) == 0, "reported once; the stream goes on"

    # Arguments already in device memory (aclrtLaunchKernel, and V2 with no attributes).
    lib.aclrtLaunchKernel.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p,
                                      ctypes.c_size_t, ctypes.c_void_p]
    lib.aclrtLaunchKernelV2.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p,
                                        ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
    on_device = ctypes.c_void_p()
    assert lib.aclrtMalloc(ctypes.byref(on_device), ctypes.c_size_t(64), 0) == 0

    def settled(status):
        return status or lib.aclrtSynchronizeStream(stream), lib.aclGetRecentErrMsg() or b""
    status, message = settled(lib.aclrtLaunchKernel(function, 4, args, 64, stream))
    assert status == 100000 and b"not device memory" in message, (status, message)
    status, message = settled(lib.aclrtLaunchKernel(function, 4, on_device.value + 32, 64, stream))
    assert status == 100000 and b"past its allocation" in message, (status, message)
    assert lib.aclrtLaunchKernel(function, 0, on_device, 64, stream) == 107000
    assert lib.aclrtLaunchKernelV2(function, 4, on_device, 64, cfg, stream) == 207000
    for status, message in (settled(lib.aclrtLaunchKernel(function, 4, on_device, 64, stream)),
                            settled(lib.aclrtLaunchKernelV2(function, 4, on_device, 64, None, stream))):
        assert status != 0 and b"add_custom" in message and b"cannot run Ascend AI Core code" in message, \
            (status, message)
        if os.environ.get("XPUPOOL_EXPECT_ACL_BACKEND"):
            assert b"aclrtLaunchKernel failed" in message, message
    assert lib.aclrtFree(on_device) == 0

    # The older path Ascend C's <<<>>> stubs use: a binary, a stub bound to a name.
    dev = DevBinary(0x43554245, 0, ctypes.cast(ctypes.c_char_p(image), ctypes.c_void_p), len(image))
    handle = ctypes.c_void_p()
    assert lib.rtDevBinaryRegister(ctypes.byref(dev), ctypes.byref(handle)) == 0
    stub = ctypes.create_string_buffer(1)
    assert lib.rtFunctionRegister(handle, stub, b"dvm_mix_aic", None, 0) == 0
    assert lib.rtFunctionRegister(handle, stub, b"no_such_kernel", None, 0) == 107000
    lib.rtKernelLaunch.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p,
                                   ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p]
    status = lib.rtKernelLaunch(stub, 4, args, 16, None, stream) or lib.aclrtSynchronizeStream(stream)
    assert status != 0 and b"dvm_mix_aic" in lib.aclGetRecentErrMsg()
    assert lib.rtKernelLaunch(ctypes.create_string_buffer(1), 4, args, 16, None, stream) == 107017

    # Options: an unknown magic, AI CPU kernels, a bad lazy-load value; not an AI Core object.
    def load(data, *options, loaded=None):
        opts = (ctypes.c_uint32 * max(5 * len(options), 1))(*[w for o in options for w in o])
        block = (ctypes.c_void_p * 2)(ctypes.addressof(opts), len(options))
        return lib.aclrtBinaryLoadFromData(data, ctypes.c_size_t(len(data)), block,
                                           ctypes.byref(ctypes.c_void_p() if loaded is None else loaded))
    vector = ctypes.c_void_p()
    assert load(image, (2, 0x41415246, 0, 0, 0), loaded=vector) == 0  # the vector cores' magic
    assert lib.aclrtBinaryUnLoad(vector) == 0
    assert load(image, (2, 0x1234, 0, 0, 0)) == 107000
    assert load(image, (3, 1, 0, 0, 0)) == 207000
    assert load(image, (1, 7, 0, 0, 0)) == 107000
    not_ascend = bytearray(image)
    not_ascend[18] = 190
    assert load(bytes(not_ascend)) == 107000

    assert lib.rtDevBinaryUnRegister(handle) == 0
    assert lib.aclrtBinaryUnLoad(binary) == 0
    assert lib.aclrtBinaryUnLoad(binary) == 107017
    assert lib.aclrtBinaryGetFunction(binary, b"add_custom", ctypes.byref(ctypes.c_void_p())) == 107017
    assert launch(8, [])[0] == 107017, "its functions went with it"
    assert lib.aclrtGetMemInfo(1, ctypes.byref(free), ctypes.byref(total)) == 0
    assert free.value == free_before, "unloading refunds what loading charged"
    assert lib.aclrtDestroyStream(stream) == 0
