"""Training and embedding throughput (images/s) of an encoder at one image size.

On CUDA: bf16 autocast + channels_last (as hmpcl_lib.train.loop runs); on CPU: float32.
Synthetic input tensors, so the number is the model's speed, not the PNG decoder's.

    python benchmarks/train_throughput.py --backbone efficientnet_lite0 --image-size 128 --batch-size 32 --steps 5
"""

from __future__ import annotations

import argparse
import time

import torch

from hmpcl_lib.modeling.losses import HierarchicalContrastiveLoss
from hmpcl_lib.modeling.models import build_encoder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(backbone: str, image_size: int, batch_size: int, steps: int, warmup: int, weights: str) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    encoder = build_encoder(backbone, 256, weights).to(device)
    if cuda:
        encoder.to(memory_format=torch.channels_last)
    loss_fn = HierarchicalContrastiveLoss().to(device)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    patent = torch.arange(batch_size, device=device) // 2
    subclass, klass = patent // 2, patent // 4

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            z = encoder(x)
        loss = loss_fn(z.float(), patent, subclass, klass)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def embed_step() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            encoder(x)

    results = {"device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
               "backbone": backbone, "image_size": image_size, "batch_size": batch_size}
    for name, step, mode in (("train", train_step, True), ("embed", embed_step, False)):
        encoder.train(mode)
        for _ in range(warmup):
            step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        results[f"{name}_images_per_s"] = steps * batch_size / (time.perf_counter() - start)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="none", help="weights do not change speed; 'none' avoids loading")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    r = measure(args.backbone, args.image_size, args.batch_size, args.steps, args.warmup, args.weights)
    print(f"{r['backbone']} @ {r['image_size']}px, batch {r['batch_size']}, {r['device']}: "
          f"train {r['train_images_per_s']:.1f} images/s, embed {r['embed_images_per_s']:.1f} images/s")


if __name__ == "__main__":
    main()
