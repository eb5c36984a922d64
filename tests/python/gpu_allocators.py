"""For scripts/gpu-check.sh (a real GPU): a few training steps of a small model and
a torch.cuda.graph capture and replay of one step, under the allocator setting in
PYTORCH_CUDA_ALLOC_CONF. Prints one JSON line: the setting, the losses, the graph
replay's outputs' checksum and the allocator's reserved bytes, so a native run and
one through xpupool can be compared number for number."""

import json
import os

import torch

torch.manual_seed(0)
dev = torch.device("cuda")
model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(64, 256, device=dev)
y = torch.randint(0, 10, (64,), device=dev)
losses = []
for _ in range(5):
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    losses.append(round(loss.item(), 6))

# Capture a forward pass on a side stream, replay it on new inputs.
static_in = torch.randn(64, 256, device=dev)
side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    for _ in range(2):
        model(static_in)  # warm-up, as torch.cuda.graph asks
torch.cuda.current_stream().wait_stream(side)
graph = torch.cuda.CUDAGraph()
with torch.no_grad(), torch.cuda.graph(graph):
    static_out = model(static_in)
sums = []
for i in range(3):
    static_in.copy_(torch.full((64, 256), 0.01 * (i + 1), device=dev))
    graph.replay()
    torch.cuda.synchronize()
    sums.append(round(static_out.sum().item(), 4))
print(json.dumps({
    "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
    "backend": torch.cuda.memory.get_allocator_backend(),
    "losses": losses,
    "graph_sums": sums,
    "reserved": torch.cuda.memory_reserved(),
}))
