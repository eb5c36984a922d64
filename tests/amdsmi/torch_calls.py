"""The calls torch/cuda/__init__.py (PyTorch 2.x, ROCm builds) makes through the
`amdsmi` Python package, against xpupool's stand-in: device count
(_raw_device_count_amdsmi), UUIDs for HIP_VISIBLE_DEVICES (_raw_device_uuid_amdsmi:
asic_serial), device_memory_used (vram_usage, MB), utilization (gfx_activity),
memory_usage (umc_activity), clock_rate (clock info), list_gpu_processes (process
list), and power_draw / temperature raising AmdSmiLibraryException (not supported).
Run by scripts/run-amdsmi-tests.sh through `xpupool run`, with the package from PyPI
on PYTHONPATH and the stand-in found as libamd_smi.so on LD_LIBRARY_PATH."""
import os
import sys

import amdsmi

failures = 0


def expect(cond, what):
    global failures
    if not cond:
        print(f"FAIL  torch_calls: {what}", file=sys.stderr)
        failures += 1


amdsmi.amdsmi_init()
handles = amdsmi.amdsmi_get_processor_handles()
expect(len(handles) >= 1, f"{len(handles)} devices")
h = handles[0]
asic = amdsmi.amdsmi_get_gpu_asic_info(h)
serial = str(asic["asic_serial"][2:]).lower()
expect(len(serial) == 16, f"asic_serial {asic['asic_serial']}")
uuid = amdsmi.amdsmi_get_gpu_device_uuid(h)
expect(uuid.replace("-", "").startswith(serial), f"uuid {uuid} vs serial {serial}")
vram = amdsmi.amdsmi_get_gpu_vram_usage(h)
expect(vram["vram_total"] > 0 and vram["vram_used"] <= vram["vram_total"], f"vram {vram}")
total = amdsmi.amdsmi_get_gpu_memory_total(h, amdsmi.AmdSmiMemoryType.VRAM)
expect(total >> 20 == vram["vram_total"], f"memory_total {total} vs {vram}")
activity = amdsmi.amdsmi_get_gpu_activity(h)
expect(0 <= activity["gfx_activity"] <= 100, f"activity {activity}")
expect(0 <= activity["umc_activity"] <= 100, f"activity {activity}")
procs = amdsmi.amdsmi_get_gpu_process_list(h)
expect(isinstance(procs, list), f"process list {procs!r}")
for call, args in [
    (amdsmi.amdsmi_get_power_info, ()),
    (amdsmi.amdsmi_get_temp_metric, (amdsmi.AmdSmiTemperatureType.JUNCTION, amdsmi.AmdSmiTemperatureMetric.CURRENT)),
]:
    try:
        call(h, *args)
        expect(False, f"{call.__name__} answered")
    except amdsmi.AmdSmiLibraryException as e:
        expect(e.get_error_code() == 2, f"{call.__name__}: {e}")
try:
    clock = amdsmi.amdsmi_get_clock_info(h, amdsmi.AmdSmiClkType.GFX)
    expect("clk" in clock or "cur_clk" in clock, f"clock {clock}")
except amdsmi.AmdSmiLibraryException as e:
    expect(e.get_error_code() == 2, f"clock: {e}")
amdsmi.amdsmi_shut_down()
if failures:
    sys.exit(1)
print(f"ok    torch_calls: amdsmi {amdsmi.__version__}: {len(handles)} device(s), {asic['market_name']}, "
      f"{vram['vram_total']} MB, gfx {activity['gfx_activity']}%, {len(procs)} process(es)")
