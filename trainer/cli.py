"""The trainer stage's commands (synth, train, eval, import) and the runner every stage's command line shares.

The `tbps` entry point (serving/cli.py) adds them beside the later stages' commands. Each
command imports its modules lazily, so `--help` is fast."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 128x48, got {text!r}") from None
    return h, w


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, so the recipe has a single definition. Flags left out take
    the value of --recipe, else TrainConfig's default (the help shows the latter)."""
    from trainer.fit import TrainConfig
    from trainer.recipes import RECIPES
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("data", "out"):
            p.add_argument(flag, required=True)
        elif f.name == "recipe":
            p.add_argument(flag, default=argparse.SUPPRESS, metavar="NAME",
                           help=f"the defaults of a named recipe: {', '.join(RECIPES)}; join with + "
                                f"(tiny+irra); default: tbps")
        elif f.name == "method_args":
            p.add_argument("--method-arg", dest="method_args", action="append", type=_key_value,
                           default=argparse.SUPPRESS, metavar="KEY=VALUE", help="a hyper-parameter of the method")
        elif f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"default: {f.default}")
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=f"default: {f.default}")


def cmd_synth(a) -> None:
    from trainer.data.synthetic import write_synthetic
    out = write_synthetic(a.out, ids=a.ids, seed=a.seed, image_size=a.image_size, overwrite=a.overwrite)
    print(f"wrote {out / 'reid_raw.json'}")


def train_config(a):
    """The TrainConfig of `train`'s arguments: the flags given, over --recipe's values."""
    from trainer.fit import TrainConfig
    from trainer.recipes import recipe
    given = {f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(a, f.name)}
    if "method_args" in given:
        given["method_args"] = dict(given["method_args"])
    return TrainConfig(**recipe(given.pop("recipe", "tbps"), **given))


def cmd_train(a) -> None:
    from trainer.fit import train
    best = train(train_config(a))
    if os.environ.get("RANK", "0") == "0":  # one line, not one per torchrun process
        print(f"best checkpoint: {best}")


def cmd_eval(a) -> None:
    import torch
    from trainer.checkpoint import load_checkpoint
    from trainer.data.formats import load_dataset
    from trainer.evaluate import evaluate
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_checkpoint(a.checkpoint, device)
    data = load_dataset(a.data)
    entries = data.split(a.split)
    bank = [c for e in data.train for c in e.captions] if a.margin else ()
    metrics = evaluate(ckpt.model, ckpt.tokenizer, entries, device, a.batch_size, a.workers,
                       progress=not a.json, margin_bank=bank, margin_beta=a.margin)
    if a.json:
        print(json.dumps(metrics))
        return
    print(f"{ckpt.path} on {a.data} [{a.split}]: {len(entries)} images")
    for direction, m in metrics.items():
        print(f"  {direction}: " + "  ".join(f"{k} {v:6.2f}" for k, v in m.items()))


def cmd_import(a) -> None:
    from trainer.import_irra import import_irra
    out, dropped = import_irra(a.checkpoint, a.out, a.bpe, a.image_size)
    print(f"wrote {out} (baseline method, IRRA's preprocessing; dropped: {', '.join(dropped) or 'nothing'})")


def add_commands(sub) -> None:
    """The trainer stage's commands: synth, train, eval, import."""
    from trainer.recipes import DEMO_IDS
    p = sub.add_parser("synth", help="write a synthetic pedestrian dataset (CUHK-PEDES format)")
    p.add_argument("--out", required=True)
    p.add_argument("--ids", type=int, default=DEMO_IDS, help="number of people")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=_size, default=(128, 48), metavar="HxW")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_synth)

    p = sub.add_parser("train", help="train a model (resumes if OUT holds a run)")
    _add_train_flags(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="retrieval metrics of a checkpoint (IRRA protocol)")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--margin", type=float, default=0.0, metavar="BETA",
                   help="subtract BETA x the gallery adaptive margin b_g, estimated from the "
                        "training captions (text-to-image only; 0: off)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("import", help="convert a checkpoint trained elsewhere (IRRA's best.pth) into a tbps checkpoint")
    p.add_argument("source", choices=["irra"], help="the codebase that wrote it")
    p.add_argument("checkpoint", help="IRRA's best.pth ({'model': state dict, ...})")
    p.add_argument("--out", required=True, help="the checkpoint directory to write")
    p.add_argument("--bpe", required=True, help="CLIP's merges file, bpe_simple_vocab_16e6.txt.gz (IRRA's vocabulary)")
    p.add_argument("--image-size", type=_size, default=(384, 128), metavar="HxW",
                   help="the size it was trained at (IRRA's --img_size; default 384x128)")
    p.set_defaults(fn=cmd_import)


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Parse and run `fn` (set by the parser); its status, if any, is the exit status. The errors a
    user can meet are one clear line, no traceback: every command line of the project ends here."""
    args = parser.parse_args(argv)
    name = " ".join(filter(None, (parser.prog, getattr(args, "command", None))))
    try:
        status = args.fn(args)
    except (OSError, ValueError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    if status:
        sys.exit(status)


def run_script(description: str, add_arguments, fn, argv: list[str] | None = None) -> None:
    """A stage script's own command line (`python export/X.py ...`): the arguments and the action
    of its `tbps` command, so the two cannot drift apart."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(fn=fn)
    run(parser, argv)


def main(argv: list[str] | None = None) -> None:
    """`python -m trainer`: the trainer's own commands (what `torchrun -m trainer train` runs)."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description="synthesize, train and evaluate")
    add_commands(parser.add_subparsers(dest="command", required=True))
    run(parser, argv)


if __name__ == "__main__":
    main()
