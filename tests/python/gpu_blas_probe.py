"""For scripts/gpu-check.sh (a real GPU): one matrix product in each of float32,
float16 and bfloat16 through cuBLAS(Lt), each reported as ok (with a checksum) or as
the error it raised, so a native run and one through xpupool can be compared and a
failure placed (the script runs it with cuBLASLt's log and xpupool's call trace on)."""

import torch

torch.manual_seed(0)
a = torch.randn(64, 256, device="cuda")
w = torch.randn(512, 256, device="cuda")
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    try:
        r = a.to(dtype) @ w.to(dtype).t()
        torch.cuda.synchronize()
        print(f"{dtype}: ok {float(r.float().abs().sum()):.1f}")
    except Exception as e:  # noqa: BLE001 - reported, and the next dtype tried
        print(f"{dtype}: failed {str(e)[:300]}")
