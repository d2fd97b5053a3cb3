"""The `posenet-ros` command. Each subcommand is a thin wrapper around a library function.

    posenet-ros synth --layout 7scenes OUT [--config YAML] [key=value ...]
    posenet-ros train --data D --out O [--config YAML] [--resume] [key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from posenet_ros.checkpoint import CheckpointError
from posenet_ros.config import ConfigError, load_config
from posenet_ros.data.frames import DatasetError

logger = logging.getLogger("posenet_ros")

# Errors a user can cause with their input: reported as one line, without a traceback.
USER_ERRORS = (ConfigError, CheckpointError, DatasetError, FileNotFoundError, FileExistsError, ValueError)


def _synth(args: argparse.Namespace) -> int:
    from posenet_ros.data.synthetic import SceneConfig, write_synthetic_scene

    config = load_config(SceneConfig, args.config, args.overrides)
    summary = write_synthetic_scene(config, args.layout, args.out, progress=not args.quiet)
    print(f"wrote {summary['frames']} frames ({config.width}x{config.height}) in the "
          f"{args.layout} layout to {args.out}")
    for sequence in summary["sequences"]:
        outside = sum(not flag for flag in sequence["in_map"])
        print(f"  {sequence['folder']:<24} split={sequence['split']:<10} frames={sequence['frames']}"
              + (f"  ({outside} outside the mapped area)" if outside else ""))
    print(f"render time: {1000 * summary['render_seconds_per_frame']:.0f} ms per frame; "
          f"scene description in {Path(args.out) / 'synthetic.json'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import json

    from posenet_ros.training import STATE_FILE, TrainConfig, read_train_state_metadata, train

    base, data = None, args.data
    if args.resume:
        stored = read_train_state_metadata(args.out / STATE_FILE)
        base = json.loads(stored["config"])
        data = data or Path(stored["data_root"])
    if data is None:
        raise ValueError("--data is required (the dataset folder to train on)")
    overrides = list(args.overrides)
    for flag, key in ((args.device, "device"), (args.pretrained, "pretrained")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    config = load_config(TrainConfig, args.config, overrides, base=base)
    path = train(config, data, args.out, resume=args.resume, stop_after_epoch=args.stop_after_epoch,
                 progress=not args.quiet)
    print(f"model written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posenet-ros", description="Learned camera relocalization "
                                     "(PoseNet family, Kendall et al.) for ROS 2.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="render the built-in synthetic scene as a dataset",
                                description="Render the two-room synthetic scene (exact RGB, depth, "
                                "intrinsics and poses) in the 7-Scenes or Cambridge Landmarks layout.")
    synth.add_argument("--layout", choices=["7scenes", "cambridge"], default="7scenes")
    synth.add_argument("--config", type=Path, help="YAML scene config (see config/synthetic_scene.yaml)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.add_argument("out", type=Path, help="output folder (new or empty)")
    synth.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. width=320")
    synth.set_defaults(func=_synth)

    train = commands.add_parser("train", help="train a PoseNet on a dataset folder",
                                description="Train a pose regressor (config: posenet_ros.training."
                                "TrainConfig; see config/train.yaml). Checkpoints every epoch into OUT.")
    train.add_argument("--config", type=Path, help="YAML training config")
    train.add_argument("--data", type=Path, help="dataset folder (7-Scenes or Cambridge layout)")
    train.add_argument("--out", type=Path, required=True, help="output folder for checkpoints and metrics")
    train.add_argument("--resume", action="store_true", help="continue the run in OUT exactly")
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (default from the config: auto)")
    train.add_argument("--pretrained", help="backbone weights (.safetensors with torchvision key names)")
    train.add_argument("--stop-after-epoch", type=int, help="stop once this many epochs are done")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=1e-3")
    train.set_defaults(func=_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        print(f"posenet-ros {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"posenet-ros {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
