"""embed's throughput against a bare timm inference loop on the same model, batch size and
threads, in fp32 and bf16, in one run.

    python bench/bench_embed.py [--images 512] [--size 224] [--json bench/embed_results.json]

Rows: `bare timm` (timm.create_model, eval, channels-last, inference_mode, autocast as the row says,
over float batches made beforehand: the forward pass alone); `embed forward` (the stage's
`backbones.features` on the same pixels: uint8 to float, the model's own normalisation, the forward);
`embed stage` (embed.run end to end on a folder of PNG files: decoding at the size included). Each
row is timed after a warm-up batch, best of `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ARCH = "resnet18"


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up: one-time allocations, oneDNN's kernel choice
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    import timm
    from safetensors.torch import save_file

    from pipeline.core import dataset, params
    from pipeline.learn import backbones
    from pipeline.stages import embed, ingest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    results = {"arch": ARCH, "images": args.images, "size": args.size, "batch": args.batch}
    results["threads"] = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        net = timm.create_model(ARCH, num_classes=1000)
        save_file(net.state_dict(), root / "w.safetensors")
        for i, image in enumerate(pixels):  # two classes of PNG files, as a user's folder
            (root / "images" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / f"c{i % 2}" / f"{i:05d}.png")
        base = {"ingest": {"source": "imagefolder", "path": str(root / "images"), "image_size": 32}}
        out = root / "ingest"
        ingest.write(params.parse(base), out)
        df = dataset.read_manifest(out)[0]
        for precision in ("fp32", "bf16"):
            cfg = base | {"backbone": {"name": f"timm:{ARCH}", "weights": str(root / "w.safetensors")}}
            cfg["backbone"] |= {"image_size": args.size, "batch_size": args.batch, "precision": precision}
            p = params.parse(cfg)
            bf16 = precision == "bf16"
            bare = timm.create_model(ARCH, num_classes=0).eval().to(memory_format=torch.channels_last)
            x = (
                torch.from_numpy(pixels)
                .permute(0, 3, 1, 2)
                .float()
                .div(255)
                .contiguous(memory_format=torch.channels_last)
            )

            def bare_loop():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    for i in range(0, len(x), args.batch):
                        bare(x[i : i + args.batch])

            loaded = backbones.load(p.backbone, 3)

            def embed_forward():
                for i in range(0, len(pixels), args.batch):
                    backbones.features(loaded, pixels[i : i + args.batch], torch.device("cpu"), bf16)

            def embed_stage():
                embed.run(p, df, 3)

            row = {}
            for name, fn in (("bare timm", bare_loop), ("embed forward", embed_forward), ("embed stage", embed_stage)):
                seconds = best_of(fn, args.repeats)
                row[name] = {"seconds": round(seconds, 3), "images_per_second": round(args.images / seconds, 1)}
            for name in ("embed forward", "embed stage"):
                row[name]["vs_bare"] = round(row["bare timm"]["seconds"] / row[name]["seconds"], 3)
            results[precision] = row
            print(precision, json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
