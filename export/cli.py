"""The export stage's commands: each wraps one script of this folder, with the script's own
arguments, so `tbps trt CKPT ...` and `python export/to_trt.py CKPT ...` are the same command."""
from __future__ import annotations

import argparse

from export import ann_index, build_gallery, to_onnx, to_trt

COMMANDS = {
    "export": (to_onnx, "ONNX encoders of a checkpoint, with their manifest"),
    "gallery": (build_gallery, "encode a dataset split or a folder of images into a gallery file"),
    "trt": (to_trt, "TensorRT engines of a checkpoint, checked against torch, with their record"),
    "ann": (ann_index, "ANN indexes of a gallery's segments: the first stage of two-stage search"),
}


def add_commands(sub) -> None:
    for name, (script, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=script.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        script.add_arguments(p)
        p.set_defaults(fn=script.run)
