"""Records the call trace committed beside this file (see record.sh): a small
bag-of-embeddings classifier trained with AdamW — two warm-up steps, then three
steps, each between torch.cuda.profiler.start() and stop(), which `xpupool bench
replay` takes as the steps of the trace.

The mock runs no kernel while recording (`xpupool run --kernels skip`), so the loss
values are meaningless; the driver calls are PyTorch's own. The model has no matrix
multiplication: cuBLAS refuses its GEMMs on the mock device (CUBLAS_STATUS_NOT_SUPPORTED,
decided inside cuBLAS; no driver call fails), so its projection is a broadcast
multiply and a sum, which autograd and the optimizer treat like any layer."""

import torch
import torch.nn as nn

WARMUP, STEPS = 2, 3
VOCAB, DIM, CLASSES, BATCH, WORDS = 1000, 64, 10, 128, 16


class BagOfEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.weight = nn.Parameter(torch.randn(DIM, CLASSES) / DIM**0.5)
        self.bias = nn.Parameter(torch.zeros(CLASSES))

    def forward(self, words):
        h = nn.functional.gelu(self.norm(self.embed(words).mean(1)))
        return (h.unsqueeze(2) * self.weight).sum(1) + self.bias


def main():
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = BagOfEmbeddings().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    words = torch.randint(0, VOCAB, (WARMUP + STEPS, BATCH, WORDS)).to(device)
    labels = torch.randint(0, CLASSES, (WARMUP + STEPS, BATCH)).to(device)
    for step in range(WARMUP + STEPS):
        measured = step >= WARMUP
        if measured:
            torch.cuda.profiler.start()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(words[step]), labels[step])
        loss.backward()
        optimizer.step()
        loss.item()  # the loop's synchronisation point, as in real training loops
        if measured:
            torch.cuda.profiler.stop()
    print(f"recorded {STEPS} steps")


if __name__ == "__main__":
    main()
