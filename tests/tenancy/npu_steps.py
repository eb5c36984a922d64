"""An Ascend tenant's job for tests/tenancy: torch_npu through `xpupool run
--server`, N elementwise operators on the stand-in device, its memory limit seen
and enforced. Prints PASS."""

import sys

import torch
import torch_npu  # noqa: F401

steps, limit = int(sys.argv[1]), int(sys.argv[2])
assert torch.npu.get_device_properties(0).total_memory == limit
x = torch.zeros(1 << 16, device="npu")
for _ in range(steps):
    x = x + 1
torch.npu.synchronize()
assert torch.equal(x.cpu(), torch.full((1 << 16,), float(steps)))
try:
    torch.empty(limit + (1 << 20), dtype=torch.uint8, device="npu")
    raise SystemExit("allocated past the tenant's limit")
except torch.OutOfMemoryError:
    pass
print("PASS")
