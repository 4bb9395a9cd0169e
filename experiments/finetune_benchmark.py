"""Fine-tuning on real, partially labelled photos: COCO128 + road signs in one network.

The two sources annotate different classes: COCO all four, the road-sign set only stop sign
and traffic light (pedestrian and car are ``?`` there). Both are converted with
``drivemtl convert``, each split deterministically into train and validation
(``data_scripts/recipes/split_manifest.py``, a hash of the file name), and one model is
fine-tuned on the union. Arms, all with ``configs/finetune.yaml`` (same input size,
augmentation, epochs, batch and schedule):

1. ``imagenet``: presence, from the ImageNet weights of ``--weights``;
2. ``random``: presence, random init (the two settings that only make sense for a pretrained
   trunk switched off: ``backbone_lr_scale 1``, ``freeze_bn_stats false``);
3. ``imagenet+det`` / ``random+det``: the same with the detection head
   (``configs/finetune_detection.yaml``);
4. ``reference``: a plain PyTorch + timm fine-tune of the same network (timm's classifier
   model, a masked BCE over the labelled entries, torchvision augmentation, the same weights,
   epochs, batch, optimiser, learning rates and schedule), scored by ``drivemtl evaluate``.

Every arm is scored at its LAST epoch on the validation split (no epoch chosen on it). Results
go to ``--out`` (``results.md``, ``results.json``, the runs); a finished run is reused.

Usage:
    python experiments/finetune_benchmark.py                       # the README's table
    python experiments/finetune_benchmark.py --epochs 1 --arms imagenet reference  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmarks' machine description
from _machine import cpu_model  # noqa: E402

CLASSES = ("pedestrian", "car", "stop_sign", "traffic_light")
SHARED = REPO.parent / "shared"
RANDOM = ["--model.weights=null", "--model.backbone_lr_scale=1", "--model.freeze_bn_stats=false"]
ARMS = {
    "imagenet": ("configs/finetune.yaml", True, []),
    "random": ("configs/finetune.yaml", False, RANDOM),
    "imagenet+det": ("configs/finetune_detection.yaml", True, []),
    "random+det": ("configs/finetune_detection.yaml", False, RANDOM),
}


def drivemtl(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "drivemtl", *args], check=True, cwd=REPO, env=env)


def prepare_data(data: Path, out: Path) -> dict[str, list[str]]:
    """Convert both sources and split each into train / validation; the manifests by split."""
    split = out / "data"
    if not (split / "roadsign_val.jsonl").is_file():
        split.mkdir(parents=True, exist_ok=True)
        coco = data / "coco128-train"
        drivemtl(
            "convert",
            "coco",
            "--annotations",
            str(coco / "annotations/instances.json"),
            "--images",
            str(coco / "images"),
            "--out",
            str(split / "coco.jsonl"),
        )
        signs = data / "roadsign-dev"
        drivemtl(
            "convert",
            "voc",
            "--annotations",
            str(signs / "annotations"),
            "--images",
            str(signs / "images"),
            "--out",
            str(split / "roadsign.jsonl"),
        )
        subprocess.run(
            [
                sys.executable,
                str(REPO / "data_scripts/recipes/split_manifest.py"),
                str(split / "coco.jsonl"),
                str(split / "roadsign.jsonl"),
                "--out-dir",
                str(split),
            ],
            check=True,
        )
    return {
        part: [str(split / f"{source}_{part}.jsonl") for source in ("coco", "roadsign")]
        for part in ("train", "val")
    }


def timed(run: Path, command: list[str]) -> float:
    """Run a command once (reused when its time is recorded); its wall time in seconds."""
    timing = run / "train_seconds.txt"
    if timing.is_file():
        print(f"[{run.name}] reused; delete {run} to train again")
        return float(timing.read_text())
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    run.mkdir(parents=True, exist_ok=True)
    timing.write_text(f"{seconds:.1f}\n")
    return seconds


def run_arm(name: str, manifests, args) -> dict:
    config, pretrained, extra = ARMS[name]
    run = args.out / name
    data = [
        f"--data.train_manifest=[{', '.join(manifests['train'])}]",
        f"--data.val_manifest=[{', '.join(manifests['val'])}]",
    ]
    weights = [f"--model.weights={args.weights}"] if pretrained else []
    seconds = timed(
        run,
        [
            sys.executable,
            "-m",
            "drivemtl",
            "fit",
            "--config",
            config,
            *data,
            *weights,
            *extra,
            f"--trainer.max_epochs={args.epochs}",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={run}",
        ],
    )
    last = run / "last_epoch"
    if not (last / "metrics.json").is_file():  # the last epoch, not the best on validation
        drivemtl(
            "validate",
            *data,
            f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={last}",
        )
    return {"seconds": seconds, "metrics": json.loads((last / "metrics.json").read_text())}


# --- the plain PyTorch + timm reference ------------------------------------------------------


def reference_fit(manifests: dict[str, list[str]], args) -> None:
    """Fine-tune timm's tf_efficientnet_lite0 classifier in a plain loop; write predictions."""
    import timm
    import torch
    from PIL import Image, ImageOps
    from torch import nn
    from torchvision import transforms as T

    from drivemtl.checkpoints import load_checkpoint  # the project's one safe loader

    config = _config_values("configs/finetune.yaml")
    torch.manual_seed(0)
    height, width = config["image_size"]
    mean = std = (0.5, 0.5, 0.5)  # timm's pretrained config for lite0
    train_tf = T.Compose(
        [
            T.RandomHorizontalFlip(),
            T.RandomResizedCrop(
                (height, width),
                scale=(0.6, 1.0),
                ratio=(width / height * 0.85, width / height / 0.85),
            ),
            T.ColorJitter(0.3, 0.3, 0.3, 0.03),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    eval_tf = T.Compose([T.Resize((height, width)), T.ToTensor(), T.Normalize(mean, std)])

    def entries(paths):
        for path in paths:
            for line in Path(path).read_text().splitlines():
                entry = json.loads(line)
                image = Path(path).parent / entry["image"]
                values = [entry["presence"].get(c, "?") for c in CLASSES]
                yield image, entry["image"], values

    class Photos(torch.utils.data.Dataset):
        def __init__(self, paths, transform):
            self.items, self.transform = list(entries(paths)), transform

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            image, name, values = self.items[i]
            picture = ImageOps.exif_transpose(Image.open(image)).convert("RGB")
            target = torch.tensor([float(v) if v != "?" else 0.0 for v in values])
            known = torch.tensor([v != "?" for v in values], dtype=torch.float32)
            return self.transform(picture), target, known, i

    model = timm.create_model("tf_efficientnet_lite0", num_classes=len(CLASSES))
    state = load_checkpoint(args.weights, "weights file")
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) == {"classifier.weight", "classifier.bias"} and not unexpected
    train = torch.utils.data.DataLoader(
        Photos(manifests["train"], train_tf),
        batch_size=config["batch_size"],
        shuffle=True,
        num_workers=1,
        drop_last=False,
    )
    head = list(model.classifier.parameters())
    head_ids = {id(p) for p in head}
    trunk = [p for p in model.parameters() if id(p) not in head_ids]
    lr = config["lr"]
    optimizer = torch.optim.AdamW(
        [{"params": trunk, "lr": lr * config["backbone_lr_scale"]}, {"params": head, "lr": lr}],
        weight_decay=config["weight_decay"],
    )
    total = args.epochs * len(train)
    warmup = min(config["warmup_steps"], total // 4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / (warmup + 1)
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * min((s - warmup) / max(total - warmup, 1), 1.0)))
        ),
    )
    for epoch in range(args.epochs):
        model.train()
        if config["freeze_bn_stats"]:  # the same held ImageNet statistics as the recipe
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        for images, target, known, _ in train:
            logits = model(images)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
            loss = (loss * known).sum() / known.sum().clamp(min=1)  # "?" is not a 0
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"[reference] epoch {epoch + 1}/{args.epochs} done, last loss {loss.item():.3f}")
    model.eval()
    val = Photos(manifests["val"], eval_tf)
    out = args.out / "reference"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with torch.no_grad():
        for images, _, _, index in torch.utils.data.DataLoader(val, batch_size=16):
            for p, i in zip(torch.sigmoid(model(images)).tolist(), index.tolist()):
                _, name, _ = val.items[i]
                presence = {c: round(v, 5) for c, v in zip(CLASSES, p)}
                present = [c for c, v in presence.items() if v >= 0.5]
                rows.append(
                    {
                        "image": str(Path(val.items[i][0]).resolve()),
                        "presence": presence,
                        "present": present,
                    }
                )
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _config_values(path: str) -> dict:
    import yaml

    config = yaml.safe_load((REPO / path).read_text())
    model, data = config["model"], config["data"]
    return {
        "image_size": data["image_size"],
        "batch_size": data["batch_size"],
        "lr": model["optimizer"]["init_args"]["lr"],
        "weight_decay": model["optimizer"]["init_args"]["weight_decay"],
        "backbone_lr_scale": model["backbone_lr_scale"],
        "warmup_steps": model["warmup_steps"],
        "freeze_bn_stats": model["freeze_bn_stats"],
    }


def run_reference(manifests, args) -> dict:
    run = args.out / "reference"
    seconds = timed(
        run,
        [
            sys.executable,
            __file__,
            "--reference-only",
            "--out",
            str(args.out),
            "--weights",
            str(args.weights),
            "--epochs",
            str(args.epochs),
        ],
    )
    scored = run / "evaluation"
    if not (scored / "metrics.json").is_file():
        # One manifest of the validation images, with absolute paths as in the predictions.
        merged = run / "val.jsonl"
        lines = []
        for path in manifests["val"]:
            for line in Path(path).read_text().splitlines():
                entry = json.loads(line)
                entry["image"] = str((Path(path).parent / entry["image"]).resolve())
                entry.pop("boxes", None)
                lines.append(json.dumps(entry) + "\n")
        merged.write_text("".join(lines))
        drivemtl(
            "evaluate",
            "--predictions",
            str(run / "predictions.jsonl"),
            "--manifest",
            str(merged),
            "--output_dir",
            str(scored),
        )
    return {"seconds": seconds, "metrics": json.loads((scored / "metrics.json").read_text())}


# --- the table ----------------------------------------------------------------------------


def table(results: dict) -> str:
    def cell(value):
        return "-" if value is None else f"{value:.3f}"

    head = (
        "| arm | " + " | ".join(CLASSES) + " | presence macro AP | detection mAP@0.5 | "
        "fit wall time |"
    )
    lines = [head, "|" + "---|" * (len(CLASSES) + 4)]
    for name, result in results.items():
        presence = result["metrics"]["presence"]
        per_class = [cell(presence["per_class"][c]["ap"]) for c in CLASSES]
        detection = result["metrics"].get("detection", {}).get("map50")
        minutes = result["seconds"] / 60
        lines.append(
            f"| {name} | "
            + " | ".join(per_class)
            + f" | {cell(presence['map'])} | {cell(detection)} | {minutes:.1f} min |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "data")
    parser.add_argument(
        "--weights", type=Path, default=SHARED / "weights/tf_efficientnet_lite0.pth"
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "finetune_benchmark")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--arms", nargs="+", default=[*ARMS, "reference"])
    parser.add_argument("--reference-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out.resolve()
    manifests = prepare_data(args.data, args.out)
    if args.reference_only:
        reference_fit(manifests, args)
        return
    results = {}
    for name in args.arms:
        results[name] = (
            run_reference(manifests, args)
            if name == "reference"
            else run_arm(name, manifests, args)
        )
    text = (
        f"{table(results)}\n\nValidation split, last epoch of {args.epochs}; "
        f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, {os.cpu_count()} cores, "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}.\n"
    )
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
