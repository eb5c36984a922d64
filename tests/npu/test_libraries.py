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
    assert lib.aclopCompileAndExecute() == 200001  # ACL_ERROR_API_NOT_SUPPORT
    lib.aclGetRecentErrMsg.restype = ctypes.c_char_p
    assert b"aclopCompileAndExecute is not implemented" in lib.aclGetRecentErrMsg()


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
    is done; a blocking one has run when the launch returns. aclrtLaunchHostFunc
    runs its function before it returns, after the stream's work."""
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
        assert [d for d, _ in ran] == [1, 2], "a blocking callback has run when its launch returns"
        assert all(t == thread.ident for _, t in ran), "on the subscribed thread"
        assert lib.aclrtLaunchHostFunc(stream, callback, ctypes.c_void_p(3)) == 0
        assert ran[-1] == (3, threading.get_ident()), "a host function runs before its launch returns"
        assert lib.aclrtUnSubscribeReport(thread.ident, stream) == 0
        assert lib.aclrtFree(memory) == 0
    finally:
        stop.set()
        thread.join(timeout=10)
    assert lib.aclrtDestroyStream(stream) == 0


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
