"""Converts an ultralytics YOLOv8 detection checkpoint (.pt) to the safetensors file yolo.c reads.

    pip install ultralytics safetensors
    python3 scripts/convert_yolo.py yolov8n.pt yolov8n.safetensors [--dtype f16|f32]

The .pt is a pickled dict holding the whole nn.Module (ckpt["ema"] or ckpt["model"]); unpickling it
needs the ultralytics package, so this is done once here and the C side only ever reads safetensors.
ultralytics' own loader (nn/tasks.py load_checkpoint) reads it, exactly as YOLO("yolov8n.pt") does.

Output: the model's state_dict under its own names, unfused (yolo.c folds BatchNorm itself at load):
    model.0.conv.weight [16, 3, 3, 3], model.0.bn.weight/bias/running_mean/running_var [16], ...,
    model.22.cv2.0.2.weight/bias (box logits), model.22.cv3.0.2.weight/bias (class logits),
    model.22.dfl.conv.weight [1, 16, 1, 1] (the fixed 0..15 DFL weights)
without the `num_batches_tracked` counters (training bookkeeping). Released checkpoints store fp16, so
--dtype f16 (the default) loses nothing for them; --dtype f32 writes what the model holds as float32.
__metadata__ (all strings):
    format_version "1", architecture "yolov8-detect"
    scale            the yaml scale letter ("n", "s", ...), or "" for a yaml without `scales`
    depth_multiple, width_multiple, max_channels   the scale's three numbers (yolov8.yaml `scales`)
    nc, reg_max      number of classes, DFL bins
    names            JSON list of the class names, index = class id
    stride           JSON list of the level strides ([8, 16, 32])
    bn_eps           BatchNorm eps (ultralytics sets 1e-3 on every BatchNorm2d)
    yaml             the model's yaml dict as JSON
    source, ultralytics, torch   provenance
Anything yolo.c would compute differently is refused here with a one-line reason: a fused model (no
BatchNorm left), a yaml whose layers differ from yolov8.yaml's (YOLO11, P2/P6 variants, ...), a non-legacy
(depthwise) class branch, a BatchNorm eps other than 1e-3, or an unactivated SPPF cv1 (YOLO26 style).
"""
import argparse
import json
import os
import sys

import torch


def fail(msg):
    sys.exit(f"error: {msg}")


def yolov8_layers():
    """backbone + head of ultralytics' own yolov8.yaml, the architecture yolo.c implements."""
    import yaml
    from ultralytics.utils import ROOT

    with open(ROOT / "cfg" / "models" / "v8" / "yolov8.yaml") as f:
        d = yaml.safe_load(f)
    return d["backbone"], d["head"]


def scale_numbers(y):
    """(scale letter, depth, width, max_channels) as nn/tasks.py parse_model resolves them."""
    scales = y.get("scales")
    if scales:
        scale = y.get("scale") or next(iter(scales.keys()))
        depth, width, max_channels = scales[scale]
        return scale, float(depth), float(width), int(max_channels)
    return "", float(y.get("depth_multiple", 1.0)), float(y.get("width_multiple", 1.0)), None


def convert(model, out_path, dtype, source=""):
    """Writes model (an ultralytics DetectionModel) to out_path; returns the dict of written tensors."""
    import ultralytics
    from safetensors.torch import save_file
    from ultralytics.nn.modules import SPPF, Conv, Detect

    y = model.yaml
    backbone, head = yolov8_layers()
    # the yaml's layer list must be yolov8.yaml's (nc may differ: it is an argument, not a layer)
    ours = [list(map(str, r)) for r in backbone + head]
    theirs = [list(map(str, r)) for r in y["backbone"] + y["head"]]
    if ours != theirs:
        fail(f"{source}: the model's layers are not those of yolov8.yaml (a different YOLO architecture)")
    detect = model.model[-1]
    if type(detect) is not Detect:
        fail(f"{source}: the last layer is {type(detect).__name__}, expected a plain Detect head")
    if not isinstance(detect.cv3[0][0], Conv):
        fail(f"{source}: the class branch uses depthwise convs (non-legacy Detect); yolo.c implements YOLOv8's")
    if getattr(detect, "one2one_cv2", None) is not None:
        fail(f"{source}: end-to-end (one-to-one) heads are not supported")
    if not isinstance(model.model[9], SPPF):
        fail(f"{source}: layer 9 is not an SPPF")
    sd = model.state_dict()
    if not any(k.endswith(".bn.running_var") for k in sd):
        fail(f"{source}: the model is fused (no BatchNorm tensors); convert the unfused checkpoint")
    for name, m in model.named_modules():
        # every Conv is conv + BN + SiLU in YOLOv8, SPPF's cv1 included (YOLO26's SPPF leaves it unactivated)
        if isinstance(m, Conv) and not isinstance(m.act, torch.nn.SiLU):
            fail(f"{source}: {name} has activation {type(m.act).__name__}; yolo.c implements YOLOv8's SiLU")
        if isinstance(m, torch.nn.BatchNorm2d) and abs(m.eps - 1e-3) > 1e-12:
            fail(f"{source}: {name} has BatchNorm eps {m.eps}; yolo.c folds with ultralytics' 1e-3")

    scale, depth, width, max_channels = scale_numbers(y)
    if max_channels is None:
        max_channels = 1 << 30  # no `scales`: parse_model's float("inf")
    names = model.names
    names = [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
    tdtype = {"f16": torch.float16, "f32": torch.float32}[dtype]
    tensors = {k: v.detach().to(tdtype).contiguous() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    meta = {
        "format_version": "1",
        "architecture": "yolov8-detect",
        "scale": scale,
        "depth_multiple": repr(depth),
        "width_multiple": repr(width),
        "max_channels": str(max_channels),
        "nc": str(detect.nc),
        "reg_max": str(detect.reg_max),
        "names": json.dumps(names),
        "stride": json.dumps([int(s) for s in detect.stride.tolist()]),
        "bn_eps": "0.001",
        "yaml": json.dumps(y),
        "source": os.path.basename(source),
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
    }
    if len(names) != detect.nc:
        fail(f"{source}: {len(names)} class names for nc = {detect.nc}")
    tmp = out_path + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, out_path)
    return tensors


def load_pt(path):
    """The checkpoint's model, as ultralytics loads it for YOLO(path) (fp32, eval, unfused)."""
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(path, device="cpu", fuse=False)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pt", help="ultralytics checkpoint, e.g. yolov8n.pt")
    ap.add_argument("out", help="output .safetensors")
    ap.add_argument("--dtype", choices=("f16", "f32"), default="f16", help="storage dtype (default f16)")
    args = ap.parse_args()
    if not os.path.isfile(args.pt):
        fail(f"{args.pt}: no such file")
    model = load_pt(args.pt)
    tensors = convert(model, args.out, args.dtype, source=args.pt)
    n = sum(t.numel() for t in tensors.values())
    print(f"wrote {args.out}: {len(tensors)} tensors, {n} values ({args.dtype})")


if __name__ == "__main__":
    main()
