"""A small, deterministic training run for scripts/gpu-check.sh: an MLP and a small
transformer language model trained with AdamW for 50 steps each, plus one
torch.compile'd function. Prints one JSON object: the loss curves and the median step
time of each model. Run it natively and through xpupool and compare the curves.

Not part of the mock suite: it needs a GPU (PyTorch's kernels are SASS)."""

import json
import statistics
import time

import torch
import torch.nn as nn

STEPS = 50


def seeded(seed):
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def train(model, batch, steps=STEPS):
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    losses, times = [], []
    for step in range(steps):
        inputs, targets = batch(step)
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(inputs, targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())  # a synchronisation point, as in real loops
        times.append(time.perf_counter() - start)
    return losses, statistics.median(times) * 1000


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10))

    def forward(self, x, y):
        return nn.functional.cross_entropy(self.net(x), y)


class TinyLm(nn.Module):
    def __init__(self, vocab=512, dim=128, layers=2, heads=4, context=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.zeros(context, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(dim, vocab)
        self.context = context

    def forward(self, tokens, targets):
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], device=tokens.device)
        h = self.blocks(self.embed(tokens) + self.position[: tokens.shape[1]], mask=mask, is_causal=True)
        return nn.functional.cross_entropy(self.head(h).flatten(0, 1), targets.flatten())


def main():
    device = torch.device("cuda")
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    result = {"device": torch.cuda.get_device_name(0)}

    seeded(0)
    mlp = Mlp().to(device)
    data = torch.randn(STEPS, 128, 64, device=device)
    labels = torch.randint(0, 10, (STEPS, 128), device=device)
    result["mlp_losses"], result["mlp_step_ms"] = train(mlp, lambda s: (data[s], labels[s]))

    seeded(1)
    lm = TinyLm().to(device)
    tokens = torch.randint(0, 512, (STEPS, 16, 65), device=device)
    result["lm_losses"], result["lm_step_ms"] = train(lm, lambda s: (tokens[s, :, :-1], tokens[s, :, 1:]))

    seeded(2)
    compiled = torch.compile(lambda x: torch.sin(x) * torch.cos(x) + x.square().mean())
    x = torch.randn(1024, device=device)
    result["compiled"] = compiled(x).sum().item()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
