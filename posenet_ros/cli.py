"""The `posenet-ros` command. Each subcommand is a thin wrapper around a library function.

    posenet-ros synth --layout 7scenes OUT [--config YAML] [key=value ...]
    posenet-ros train --data D --out O [--config YAML] [--resume] [--use-depth] [--threads N] [BAG OPTIONS]
                      [key=value ...]
    posenet-ros eval --model M --data D [D ...] --out O [--threshold 2,5] [--mc-samples N]
                     [--solver kabsch|pnp] [BAG OPTIONS]
    posenet-ros calibrate --model M --data D [--split SPLIT|blocks] [--threads N]
    posenet-ros train-temporal --model M --data D [key=value ...] [BAG OPTIONS]
    posenet-ros saliency --model M --data D --out O [--frames 0 10]
    posenet-ros make-bag DATA OUT [--split test ...] [--storage mcap] [--compressed] [--no-depth] [--rate 30]
                         [--no-camera-info] [--odometry-noise POS_M ROT_DEG] [--odometry-seed N]
                         [--odometry-outage START END ...]
    posenet-ros replay BAG --model M --out O [--live] [--gt-topic T | --gt-tf PARENT CHILD]
    posenet-ros play BAG [--rate R] [--topics T ...] [--loop] [--step-topic OUT]
    posenet-ros echo TOPIC [--type T] [--qos sensor_data] [--count N] [--format json]
    posenet-ros node --model M [--params config/relocalize.yaml] [--param NAME:=VALUE ...]
    posenet-ros export --model M --format onnx|torchscript [--out FILE]

D is a dataset folder or a rosbag2 (folder, .mcap or .db3). BAG OPTIONS, for a rosbag2 (the training
config's data.bag; eval and calibrate default to the checkpoint's): [--image-topic T]
[--gt-topic T | --gt-tf PARENT CHILD] [--max-gap S] [--split-times train=0:120,test=120:]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from posenet_ros.core.config import ConfigError, load_config
from posenet_ros.data.frames import DatasetError
from posenet_ros.runtime.checkpoint import CheckpointError

logger = logging.getLogger("posenet_ros")

# Errors a user can cause with their input: reported as one line, without a traceback.
USER_ERRORS = (ConfigError, CheckpointError, DatasetError, FileNotFoundError, FileExistsError, ValueError,
               TimeoutError)


def _distortion(text: str) -> tuple[float, ...]:
    """'k1,k2,p1,p2[,k3]' -> OpenCV distortion coefficients (argparse type)."""
    try:
        values = tuple(float(value) for value in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if len(values) not in (4, 5):
        raise argparse.ArgumentTypeError(f"expected 4 or 5 numbers k1,k2,p1,p2[,k3], got {len(values)}")
    return values


def _synth(args: argparse.Namespace) -> int:
    from posenet_ros.data.synthetic import SceneConfig, write_synthetic_scene

    config = load_config(SceneConfig, args.config, args.overrides)
    summary = write_synthetic_scene(config, args.layout, args.out, progress=not args.quiet,
                                    distortion=args.distortion)
    print(f"wrote {summary['frames']} frames ({config.width}x{config.height}) in the "
          f"{args.layout} layout to {args.out}")
    for sequence in summary["sequences"]:
        outside = sum(not flag for flag in sequence["in_map"])
        print(f"  {sequence['folder']:<24} split={sequence['split']:<10} frames={sequence['frames']}"
              + (f"  ({outside} outside the mapped area)" if outside else ""))
    print(f"render time: {1000 * summary['render_seconds_per_frame']:.0f} ms per frame; "
          f"scene description in {Path(args.out) / 'synthetic.json'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from posenet_ros.runtime.export import export_model

    path, difference = export_model(args.model, args.format, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); largest difference from PyTorch on a "
          f"check input with 4 Monte-Carlo samples: {difference:.2e}")
    return 0


def _add_bag_arguments(parser: argparse.ArgumentParser, defaults: str) -> None:
    """The options of reading a rosbag2 --data (fields of `bag_dataset.BagDataConfig`); `defaults`
    says where unset ones come from."""
    group = parser.add_argument_group("rosbag2 data", f"When --data is a rosbag2 (folder, .mcap or .db3); "
                                      f"unset options: {defaults}.")
    group.add_argument("--image-topic", metavar="T",
                       help="camera topic; '': /camera/image_raw, else its /compressed, else the only one")
    group.add_argument("--depth-topic", metavar="T",
                       help="depth topic (RGB-D models, the reprojection loss); '': /camera/depth/image_raw")
    truth = group.add_mutually_exclusive_group()
    truth.add_argument("--gt-topic", metavar="T", help="ground truth: a PoseStamped, PoseWithCovariance"
                       "Stamped, TransformStamped or Odometry topic; '': /ground_truth/pose")
    truth.add_argument("--gt-tf", nargs=2, metavar=("PARENT", "CHILD"),
                       help="ground truth: the PARENT -> CHILD transform in /tf")
    group.add_argument("--max-gap", type=float, metavar="S",
                       help="longest gap between ground-truth poses to interpolate across (config default "
                       "0.1 s)")
    group.add_argument("--split-times", metavar="SPEC",
                       help="splits by time, in seconds since the bag's first image, e.g. "
                       "'train=0:120,test=120:' (END exclusive, empty = the end); '': every split is the "
                       "whole bag")


def _bag_options(args: argparse.Namespace) -> dict[str, object]:
    """Fields of `BagDataConfig` set by the rosbag2 options (a ground-truth choice clears the other)."""
    options: dict[str, object] = {}
    for name in ("image_topic", "depth_topic"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.gt_topic is not None:
        options.update(gt_topic=args.gt_topic, gt_tf="")
    if args.gt_tf is not None:
        options.update(gt_tf=" ".join(args.gt_tf), gt_topic="")
    if args.max_gap is not None:
        options["max_gap_s"] = args.max_gap
    if args.split_times is not None:
        options["split_times"] = args.split_times
    return options


def _train(args: argparse.Namespace) -> int:
    import json

    from posenet_ros.runtime.train_config import TrainConfig
    from posenet_ros.training.train import STATE_FILE, read_train_state_metadata, train, with_depth

    base, data = None, args.data
    if args.resume:
        stored = read_train_state_metadata(args.out / STATE_FILE)
        base = json.loads(stored["config"])
        data = data or Path(stored["data_root"])
    if data is None:
        raise ValueError("--data is required (the dataset folder to train on)")
    overrides = list(args.overrides)
    for flag, key in ((args.device, "device"), (args.pretrained, "pretrained"), (args.threads, "threads")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    # JSON is YAML: the values arrive as typed (strings quoted, so '' stays a string).
    overrides += [f"data.bag.{key}={json.dumps(value)}" for key, value in _bag_options(args).items()]
    config = load_config(TrainConfig, args.config, overrides, base=base)
    if args.use_depth:
        config = with_depth(config)
    path = train(config, data, args.out, resume=args.resume, stop_after_epoch=args.stop_after_epoch,
                 progress=not args.quiet)
    print(f"model written to {path}")
    return 0


def _threshold(text: str) -> tuple[float, float]:
    metres, _, degrees = text.partition(",")
    try:
        return float(metres), float(degrees)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected METRES,DEGREES such as 2,5; got {text!r}") from None


def _set_threads(threads: int | None) -> None:
    """torch.set_num_threads(`threads`) (--threads of eval and calibrate); None or 0: the default that
    training uses too (`train_config.default_threads`)."""
    import torch

    from posenet_ros.runtime.train_config import default_threads

    if threads is not None and threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: the default), got {threads}")
    torch.set_num_threads(threads or default_threads(0))


def _eval(args: argparse.Namespace) -> int:
    from posenet_ros.evaluation.evaluate import evaluate, format_table, format_uncertainty
    from posenet_ros.inference.metrics import DEFAULT_THRESHOLDS
    from posenet_ros.inference.odometry_fusion import OdometryNoise

    _set_threads(args.threads)
    thresholds = list(dict.fromkeys([*DEFAULT_THRESHOLDS, *args.threshold]))
    metrics = evaluate(args.model, args.data, split=args.split, out=args.out, thresholds=thresholds,
                       batch_size=args.batch_size, device=args.device, mc_samples=args.mc_samples,
                       unknown_splits=args.unknown_splits, bag_options=_bag_options(args),
                       smooth=args.smooth, solver=args.solver, odometry=args.odometry,
                       odometry_noise=OdometryNoise(*args.odometry_noise) if args.odometry_noise else None,
                       progress=not args.quiet)
    print(format_table(metrics))
    overall = metrics["overall"]
    if "odometry" in overall:
        print(f"odometry-aided: {overall['odometry']['missing']} of {overall['odometry']['frames']} frames "
              "without odometry (learned motion)")
    print(f"smoothing {args.smooth}: median frame-to-frame jitter "
          f"{overall['median_jitter_position_m']:.4f} m, {overall['median_jitter_rotation_deg']:.3f}°")
    if "uncertainty" in metrics["overall"]:
        print(format_uncertainty(metrics))
    print(f"metrics, per-frame predictions and plots written to {args.out}")
    return 0


def _train_temporal(args: argparse.Namespace) -> int:
    from posenet_ros.training.temporal import TemporalTrainConfig, train_temporal

    config = load_config(TemporalTrainConfig, args.config, args.overrides)
    report = train_temporal(args.model, args.data, config, progress=not args.quiet)
    print(f"trained the temporal model on {report['windows']} windows of {config.window} frames "
          f"({report['frames']} frames): final loss {report['final_loss']:.3f}; stored in {args.model}")
    if "causal_position_mean_nees_before" in report:
        scales = report["calibration"]
        print(f"  covariance scales on {config.val_split!r}: causal {scales['causal_position']:.3g} / "
              f"{scales['causal_rotation']:.3g}, offline {scales['offline_position']:.3g} / "
              f"{scales['offline_rotation']:.3g} (position / rotation)")
        for mode in ("causal", "offline"):
            blocks = []
            for block, unit, factor in (("position", " m", 1.0), ("rotation", "°", math.degrees(1.0))):
                median = report[f"{mode}_{block}_median_error"]  # metres, radians
                blocks.append(f"{block} {'smoothed' if scales[f'{mode}_{block}_smoothed'] else 'per-frame'} "
                              f"(val median error {factor * median['smoothed']:.3g}{unit} smoothed, "
                              f"{factor * median['per_frame']:.3g}{unit} per-frame)")
            print(f"  {mode}: " + "; ".join(blocks))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from posenet_ros.evaluation.calibrate import calibrate_checkpoint

    _set_threads(args.threads)
    report = calibrate_checkpoint(args.model, args.data, split=args.split, mc_samples=args.mc_samples,
                                  mc_mode=args.mc_mode, enter_percentile=args.enter_percentile,
                                  leave_percentile=args.leave_percentile, min_frames=args.min_frames,
                                  device=args.device, bag_options=_bag_options(args), progress=not args.quiet)
    print(f"calibrated on {report['frames']} frames of {report['split']!r} and {report['train_frames']} "
          f"of {report['train_split']!r} with "
          f"{report['uncertainty_source']}: "
          f"covariance x scale · exp(novelty · (score - {report['score_reference']:.3f})), position "
          f"{report['position_scale']:.3g} · exp({report['position_novelty']:.3g} ...), rotation "
          f"{report['rotation_scale']:.3g} · exp({report['rotation_novelty']:.3g} ...)")
    for stage in ("before", "after"):
        values = report[stage]
        print(f"  {stage:<6} mean NEES position {values['position']['mean_nees']:.2f} (3), rotation "
              f"{values['rotation']['mean_nees']:.2f} (3), pose {values['pose']['mean_nees']:.2f} (6)")
    loop = report["loop_closure"]
    print(f"  loop closure: known after {loop['min_frames']} frames with score <= "
          f"{loop['enter_score']:.3f}, unknown after {loop['min_frames']} frames with score > "
          f"{loop['leave_score']:.3f}")
    limits = report["sigma_limits"]
    print(f"  node's σ limits of a confident pose (p{limits['percentile']:g} of these frames): position "
          f"{limits['position_m']:.3g} m, rotation {limits['rotation_deg']:.3g}°")
    print(f"stored in {args.model}")
    return 0


def _saliency(args: argparse.Namespace) -> int:
    from posenet_ros.evaluation.saliency import write_saliency

    paths = write_saliency(args.model, args.data, split=args.split, frames=args.frames, out=args.out,
                           device=args.device)
    for path in paths:
        print(f"wrote {path}")
    return 0


def _make_bag(args: argparse.Namespace) -> int:
    from posenet_ros.inference.odometry_fusion import OdometryNoise
    from posenet_ros.tools.make_bag import make_bag

    noise = None if args.odometry_noise is None else OdometryNoise(*args.odometry_noise)
    summary = make_bag(args.data, args.out, splits=args.split or ["test"], storage=args.storage,
                       compressed=args.compressed, compressed_format=args.compressed_format,
                       with_depth=False if args.no_depth else None, rate_hz=args.rate,
                       with_camera_info=not args.no_camera_info, odometry_noise=noise,
                       odometry_seed=args.odometry_seed,
                       odometry_outages=[tuple(outage) for outage in args.odometry_outage],
                       progress=not args.quiet)
    topics = ", ".join(f"{topic} {count}" for topic, count in summary.topics.items())
    print(f"wrote {summary.path} ({summary.storage}): {summary.frames} frames, {summary.duration_s:.1f} s; "
          f"topics: {topics}")
    return 0


def _add_make_bag_parser(commands: argparse._SubParsersAction) -> None:
    # Literal choices here: building the parser must not import rosbags.
    make_bag = commands.add_parser("make-bag", help="write dataset frames as a rosbag2 (images, depth, "
                                   "camera info, ground-truth pose and tf)",
                                   description="Write the frames of dataset splits as a rosbag2 folder "
                                   "(mcap or sqlite3) stamped at a fixed rate, with a gap between "
                                   "sequences, to replay with `posenet-ros play` or `ros2 bag play`.")
    make_bag.add_argument("data", type=Path, help="dataset folder (7-Scenes or Cambridge layout)")
    make_bag.add_argument("out", type=Path, help="bag folder to create (must not exist)")
    make_bag.add_argument("--split", action="append", metavar="SPLIT",
                          help="split to write (repeatable, in this order; default: test)")
    make_bag.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap",
                          help="rosbag2 storage plugin (default mcap)")
    make_bag.add_argument("--compressed", action="store_true",
                          help="colour images as CompressedImage on /camera/image_raw/compressed")
    make_bag.add_argument("--compressed-format", choices=["jpeg", "png"], default="jpeg",
                          help="codec of --compressed (default jpeg)")
    make_bag.add_argument("--no-depth", action="store_true", help="leave out the depth images")
    make_bag.add_argument("--no-camera-info", action="store_true",
                          help="leave out /camera/camera_info (the images' K and lens distortion)")
    make_bag.add_argument("--rate", type=float, default=30.0, metavar="HZ",
                          help="frames per second of the stamps (default 30)")
    make_bag.add_argument("--odometry-noise", type=float, nargs=2, metavar=("POS_M", "ROT_DEG"),
                          help="simulate an odometry drifting as a random walk: position and rotation "
                          "error standard deviations per axis after 1 m travelled (e.g. 0.02 1.0); "
                          "default: a fixed drift")
    make_bag.add_argument("--odometry-seed", type=int, default=0, help="seed of --odometry-noise")
    make_bag.add_argument("--odometry-outage", type=float, nargs=2, action="append", default=[],
                          metavar=("START", "END"), help="no odometry between these seconds since the "
                          "first frame (repeatable)")
    make_bag.add_argument("--quiet", action="store_true", help="no progress bar")
    make_bag.set_defaults(func=_make_bag)


def _replay(args: argparse.Namespace) -> int:
    from posenet_ros.evaluation.replay import replay
    from posenet_ros.node.dds_node import load_settings

    overrides = list(args.param)
    for flag, key in ((args.mc_samples, "mc_samples"), (args.device, "device")):
        if flag is not None:
            overrides.append(f"{key}:={flag}")
    if args.use_depth:
        overrides.append("use_depth:=true")
    settings = load_settings(args.params, str(args.model), overrides, args.namespace)
    metrics = replay(args.bag, args.out, settings, image_topic=args.image_topic, depth_topic=args.depth_topic,
                     gt_topic=args.gt_topic, gt_tf=tuple(args.gt_tf) if args.gt_tf else None,
                     max_gap_s=args.max_gap, live=args.live, namespace=args.namespace,
                     domain_id=args.domain_id, storage=args.storage, in_map_radius_m=args.in_map_radius,
                     in_map_angle_deg=args.in_map_angle, smooth=args.smooth, progress=not args.quiet,
                     batch_size=args.batch)
    print(f"replayed {metrics['frames']} frames of {args.bag} ({metrics['runtime']}, "
          f"{metrics['throughput_fps']:.1f} frames/s); "
          f"{metrics['frames_with_ground_truth']} with ground truth")
    if "median_position_error_m" in metrics:
        accuracy = ", ".join(f"{label} {100 * value:.1f}%" for label, value in metrics["accuracy"].items())
        print(f"  median error {metrics['median_position_error_m']:.4f} m, "
              f"{metrics['median_orientation_error_deg']:.3f}°; {accuracy}")
    for block, values in metrics.get("uncertainty", {}).items():
        print(f"  {block:<8} mean NEES {values['mean_nees']:.2f} ({values['dimension']}), inside 2σ "
              f"{100 * values['within_2sigma']:.0f}% (Gaussian {100 * values['expected_2sigma']:.0f}%)")
    policy = metrics["policy"]
    withheld = ", ".join(f"{reason} {count}" for reason, count in policy["withheld"].items())
    print(f"  poses published {policy['frames_published']}, withheld {policy['frames_withheld']}"
          + (f" ({withheld})" if withheld else ""))
    for kind in ("published", "withheld"):
        errors = policy[f"{kind}_error"]
        if errors["frames"]:
            print(f"  {kind:<9} position error p50/p90/p99 " + "/".join(
                f"{value:.3f}" for value in errors["position_m"].values()) + " m, orientation "
                + "/".join(f"{value:.2f}" for value in errors["orientation_deg"].values()) + "°")
    print(f"report: {args.out / 'report' / 'index.html'}")
    if metrics["interrupted"]:
        print("interrupted: the outputs cover the frames processed so far", file=sys.stderr)
        return 130
    return 0


def _add_replay_parser(commands: argparse._SubParsersAction) -> None:
    replay = commands.add_parser("replay", help="evaluate a model on a rosbag2 against its ground truth",
                                 description="Run every frame of a rosbag2 through the node's pipeline "
                                 "(or, with --live, through a running node over DDS), compare with the "
                                 "bag's ground truth, and write metrics.json, frames.csv, a bag of the "
                                 "outputs and an HTML report.")
    replay.add_argument("bag", type=Path, help="rosbag2 folder (mcap or sqlite3), or a .mcap/.db3 file")
    replay.add_argument("--model", type=Path, required=True, help="checkpoint file or training folder")
    replay.add_argument("--out", type=Path, required=True, help="output folder")
    replay.add_argument("--params", type=Path, help="node parameters file (e.g. config/relocalize.yaml)")
    replay.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="node parameter override (repeatable)")
    replay.add_argument("--image-topic", help="camera topic (default: /camera/image_raw or its /compressed)")
    replay.add_argument("--depth-topic", help="depth topic (default /camera/depth/image_raw)")
    replay.add_argument("--use-depth", action="store_true", help="feed the depth images to the model")
    truth = replay.add_mutually_exclusive_group()
    truth.add_argument("--gt-topic", help="ground truth: PoseStamped, PoseWithCovarianceStamped, Odometry or "
                       "TransformStamped topic (default /ground_truth/pose)")
    truth.add_argument("--gt-tf", nargs=2, metavar=("PARENT", "CHILD"),
                       help="ground truth: the PARENT -> CHILD transform in /tf")
    replay.add_argument("--max-gap", type=float, default=0.1, metavar="S",
                        help="longest gap between ground-truth poses to interpolate across (default 0.1 s)")
    replay.add_argument("--mc-samples", type=int, help="Monte-Carlo samples (default: the checkpoint's)")
    replay.add_argument("--device", help="inference device (default auto)")
    replay.add_argument("--in-map-radius", type=float, default=0.5, metavar="M",
                        help="a frame is in the map within this distance of a training pose (default 0.5)")
    replay.add_argument("--in-map-angle", type=float, default=30.0, metavar="DEG",
                        help="... and this angle (default 30)")
    replay.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap",
                        help="storage of the output bag (default mcap)")
    replay.add_argument("--smooth", choices=["node", "off", "offline"], default="node",
                        help="node: as the node (causal temporal model if the checkpoint has one and the "
                        "smoothing parameter is on); off; offline: the bidirectional temporal model")
    replay.add_argument("--batch", type=int, default=1, metavar="N",
                        help="frames per network call in-process (the same poses; use e.g. 64 on a GPU)")
    replay.add_argument("--live", action="store_true",
                        help="play the bag over DDS to a running node and record its answers")
    replay.add_argument("--namespace", default="/", help="the running node's namespace (--live)")
    replay.add_argument("--domain-id", type=int, help="DDS domain (--live; default $ROS_DOMAIN_ID, else 0)")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(func=_replay)


def _play(args: argparse.Namespace) -> int:
    from posenet_ros.tools.play import play

    if args.quiet:
        logging.getLogger("posenet_ros.tools.play").setLevel(logging.WARNING)
    counts = play(args.bag, rate=args.rate, topics=args.topics, loop=args.loop, domain_id=args.domain_id,
                  wait_subscribers=args.wait_subscribers, wait_timeout=args.wait_timeout, delay=args.delay,
                  step_topic=args.step_topic, step_type=args.step_type, step_timeout=args.step_timeout)
    if not args.quiet:
        width = max(map(len, counts))
        print(f"published {sum(counts.values())} messages:")
        for topic, count in counts.items():
            print(f"  {topic:<{width}}  {count}")
    return 0


def _add_play_parser(commands: argparse._SubParsersAction) -> None:
    # Literal defaults and choices here: building the parser must not import cyclonedds or rosbags.
    play = commands.add_parser("play", help="publish a rosbag2 over DDS (like ros2 bag play)",
                               description="Publish the messages of a rosbag2 (folder, .mcap or .db3) "
                               "over Cyclone DDS at the recorded rate, readable by ROS 2 nodes.")
    play.add_argument("bag", type=Path, help="rosbag2 folder (sqlite3 or mcap), or a .mcap/.db3 file")
    play.add_argument("--rate", type=float, default=1.0,
                      help="time scale (default 1; 0: as fast as possible)")
    play.add_argument("--topics", nargs="+", metavar="T", help="topics to play (default: all)")
    play.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    play.add_argument("--domain-id", type=int, help="DDS domain (default: $ROS_DOMAIN_ID, else 0)")
    play.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                      help="before playing, wait until every topic has N matched subscribers")
    play.add_argument("--wait-timeout", type=float, default=10.0, metavar="S",
                      help="seconds --wait-subscribers waits before giving up (default 10)")
    play.add_argument("--delay", type=float, default=0.0, metavar="S",
                      help="seconds to sleep before the first message (after --wait-subscribers)")
    play.add_argument("--step-topic", metavar="OUT",
                      help="lock-step: after each image wait for a message on OUT with the image's stamp")
    play.add_argument("--step-type", default="geometry_msgs/msg/PoseWithCovarianceStamped", metavar="TYPE",
                      help="type of the --step-topic messages (default geometry_msgs/msg/"
                      "PoseWithCovarianceStamped)")
    play.add_argument("--step-timeout", type=float, default=10.0, metavar="S",
                      help="seconds to wait for each answer before going on (default 10)")
    play.add_argument("--quiet", action="store_true", help="no summary at the end")
    play.set_defaults(func=_play)


def _echo(args: argparse.Namespace) -> int:
    from posenet_ros.tools.echo import echo

    printed = echo(args.topic, type_name=args.type, qos=args.qos, count=args.count, timeout=args.timeout,
                   wait_timeout=args.wait_timeout, domain_id=args.domain_id, fmt=args.format,
                   output=args.output)
    if args.count is not None and printed < args.count:
        print(f"posenet-ros echo: received {printed} of {args.count} messages within {args.timeout:g} s",
              file=sys.stderr)
        return 1
    return 0


def _add_echo_parser(commands: argparse._SubParsersAction) -> None:
    echo = commands.add_parser("echo", help="print the messages of a DDS topic (like ros2 topic echo)",
                               description="Subscribe to a ROS 2 topic over Cyclone DDS and print each "
                               "message as YAML (default) or one JSON object per line.")
    echo.add_argument("topic", help="ROS topic name, e.g. /relocalized_pose")
    echo.add_argument("--type", metavar="TYPE",
                      help="ROS 2 type, e.g. geometry_msgs/msg/PoseWithCovarianceStamped (default: "
                      "discovered from a publisher)")
    echo.add_argument("--qos", choices=["sensor_data", "default", "transient_local"], default="default",
                      help="subscription QoS (default: default, i.e. reliable; cameras need sensor_data)")
    echo.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    echo.add_argument("--timeout", type=float, metavar="S",
                      help="exit S seconds after subscribing (exit code 1 if --count was not reached)")
    echo.add_argument("--wait-timeout", type=float, default=10.0, metavar="S",
                      help="seconds to wait for a publisher when discovering the type (default 10)")
    echo.add_argument("--domain-id", type=int, help="DDS domain (default: $ROS_DOMAIN_ID, else 0)")
    echo.add_argument("--format", choices=["yaml", "json"], default="yaml",
                      help="yaml (messages separated by ---) or json (one object per line)")
    echo.add_argument("--output", type=Path, metavar="FILE",
                      help="append to FILE (flushed per message) instead of printing to stdout")
    echo.set_defaults(func=_echo)


def _node(args: argparse.Namespace) -> int:
    from posenet_ros.node.dds_node import main as run

    return run(args.model, args.params, args.param, args.namespace, args.domain_id)


def _add_node_parser(commands: argparse._SubParsersAction) -> None:
    node = commands.add_parser("node", help="run the relocalization node on Cyclone DDS (no ROS needed)",
                               description="The relocalize_node of the ROS 2 package on Cyclone DDS: the "
                               "same parameters file, topics, QoS and messages; runs until Ctrl-C or "
                               "SIGTERM.")
    node.add_argument("--model", help="checkpoint (training run folder or model.safetensors); overrides "
                      "the parameters file's `model`")
    node.add_argument("--params", metavar="YAML", help="ROS 2 parameters file, e.g. config/relocalize.yaml")
    node.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                      help="override one parameter (repeatable), e.g. --param use_depth:=true")
    node.add_argument("--namespace", default="/", help="node namespace (relative topics resolve in it)")
    node.add_argument("--domain-id", type=int, help="DDS domain (default: $ROS_DOMAIN_ID, else 0)")
    node.set_defaults(func=_node)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posenet-ros", description="Learned camera relocalization "
                                     "(PoseNet family, Kendall et al.) for ROS 2.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="render the built-in synthetic scene as a dataset",
                                description="Render the two-room synthetic scene (exact RGB, depth, "
                                "intrinsics and poses) in a dataset layout: 7-Scenes (and as users bring "
                                "it: 7scenes-jpg with camera-intrinsics.txt, 7scenes-rgb without depth, "
                                "7scenes-flat one folder of frames), Cambridge Landmarks, TUM RGB-D, COLMAP "
                                "(text model, images in one folder per sequence) or NeRF (Blender-style "
                                "transforms_<split>.json with depth).")
    # data/synthetic.py SYNTHETIC_LAYOUTS (not imported here: the parser loads without numpy and cv2)
    synth.add_argument("--layout", choices=["7scenes", "7scenes-jpg", "7scenes-rgb", "7scenes-flat",
                                            "cambridge", "tum", "colmap", "nerf"], default="7scenes")
    synth.add_argument("--distortion", type=_distortion, default=(), metavar="K1,K2,P1,P2[,K3]",
                       help="OpenCV lens distortion of the written images and intrinsics (rendered "
                       "pinhole, then distorted so that undistorting recovers the render)")
    synth.add_argument("--config", type=Path, help="YAML scene config (see config/synthetic_scene.yaml)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.add_argument("out", type=Path, help="output folder (new or empty)")
    synth.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. width=320")
    synth.set_defaults(func=_synth)

    train = commands.add_parser("train", help="train a PoseNet on a dataset folder or a rosbag2",
                                description="Train a pose regressor (config: posenet_ros.training.train."
                                "TrainConfig; see config/train.yaml). Checkpoints every epoch into OUT.")
    train.add_argument("--config", type=Path, help="YAML training config")
    train.add_argument("--data", type=Path, help="dataset folder (7-Scenes or Cambridge layout) or rosbag2")
    train.add_argument("--out", type=Path, required=True, help="output folder for checkpoints and metrics")
    train.add_argument("--resume", action="store_true", help="continue the run in OUT exactly")
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (default from the config: auto)")
    train.add_argument("--pretrained", help="backbone weights (.safetensors with torchvision key names)")
    train.add_argument("--threads", type=int, metavar="N",
                       help="torch CPU threads (config `threads`; default 0: half the available cores less "
                       "the DataLoader workers, at least 1)")
    train.add_argument("--stop-after-epoch", type=int, help="stop once this many epochs are done")
    train.add_argument("--use-depth", action="store_true",
                       help="train an RGB-D model on the data's depth images (model.depth=dual_stream unless "
                       "the config chooses early_fusion; method=scr: ransac.use_depth=true, the pose from "
                       "3D-3D correspondences)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=1e-3")
    _add_bag_arguments(train, "data.bag of the config")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="evaluate a model on dataset folders or rosbag2s",
                                   description="Median position and orientation errors, threshold "
                                   "accuracies, per-frame CSV and plots, per scene and overall.")
    evaluate.add_argument("--model", type=Path, required=True, help="checkpoint file or training folder")
    evaluate.add_argument("--data", type=Path, nargs="+", required=True,
                          help="dataset folder(s) or rosbag2(s), one per scene")
    evaluate.add_argument("--out", type=Path, required=True, help="output folder")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--threshold", type=_threshold, action="append", default=[],
                          metavar="METRES,DEGREES",
                          help="extra accuracy threshold (5cm/5° is always reported)")
    evaluate.add_argument("--mc-samples", type=int,
                          help="Monte-Carlo dropout samples (default: the checkpoint's; 0: deterministic)")
    evaluate.add_argument("--unknown-splits", type=lambda text: [x for x in text.split(",") if x],
                          help="comma-separated splits of unknown places for the loop-closure metrics "
                          "(default: outside, occlusion and blur where present)")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--threads", type=int, metavar="N",
                          help="torch CPU threads (default 0: half the available cores, at least 1)")
    evaluate.add_argument("--smooth", choices=["off", "causal", "offline"], default="off",
                          help="temporal smoothing of each sequence (needs `train-temporal`; default off)")
    evaluate.add_argument("--odometry", choices=["auto", "none"], default="auto",
                          help="--smooth causal on a rosbag2: fuse the robot's odometry (/tf odom -> "
                          "base_link) when the bag has it (auto, the default) or not (none)")
    evaluate.add_argument("--odometry-noise", type=float, nargs=2,
                          metavar=("POS_M", "ROT_DEG"), help="the odometry's error: position and rotation "
                          "standard deviations per axis after 1 m travelled (default 0.02 1.0)")
    evaluate.add_argument("--solver", choices=["kabsch", "pnp"],
                          help="scene coordinate models: poses by Kabsch with each frame's depth, or by PnP "
                          "from RGB only (default: the checkpoint's ransac.use_depth)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_bag_arguments(evaluate, "those the checkpoint was trained with")
    evaluate.set_defaults(func=_eval)

    temporal = commands.add_parser("train-temporal", help="train the temporal LSTM smoother of a checkpoint",
                                   description="Train the causal and bidirectional temporal model on windows "
                                   "of consecutive frames, the per-frame model frozen, and store it in the "
                                   "checkpoint.")
    temporal.add_argument("--model", type=Path, required=True, help="checkpoint file or training folder")
    temporal.add_argument("--data", type=Path, required=True, help="dataset folder or rosbag2")
    temporal.add_argument("--config", type=Path, help="YAML with TemporalTrainConfig keys")
    temporal.add_argument("--quiet", action="store_true", help="no progress bar")
    temporal.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. window=16 epochs=40")
    temporal.set_defaults(func=_train_temporal)

    calibrate = commands.add_parser("calibrate", help="fit the covariance and loop-closure thresholds",
                                    description="Fit the covariance calibration (a scale and a "
                                    "novelty exponent per block, by Gaussian likelihood on the held-out "
                                    "split and the training frames) and the loop-closure thresholds (on "
                                    "the held-out split), and store them in the checkpoint.")
    calibrate.add_argument("--model", type=Path, required=True, help="checkpoint file or training folder")
    calibrate.add_argument("--data", type=Path, required=True, help="dataset folder or rosbag2")
    calibrate.add_argument("--split", help="held-out frames of mapped places: a split name, or 'blocks' "
                           "(time blocks held out of the training split); default: the checkpoint's "
                           "validation frames (data.val_split)")
    calibrate.add_argument("--mc-samples", type=int,
                           help="Monte-Carlo samples (default: the checkpoint's, 32)")
    calibrate.add_argument("--mc-mode", choices=["head", "full"],
                           help="sample the head only or the whole network")
    calibrate.add_argument("--enter-percentile", type=float, default=90.0,
                           help="known place below this percentile of the split's scores")
    calibrate.add_argument("--leave-percentile", type=float, default=99.0,
                           help="unknown place above this percentile")
    calibrate.add_argument("--min-frames", type=int, default=3, help="consecutive frames to switch the flag")
    calibrate.add_argument("--device", default="auto")
    calibrate.add_argument("--threads", type=int, metavar="N",
                           help="torch CPU threads (default 0: half the available cores, at least 1)")
    calibrate.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_bag_arguments(calibrate, "those the checkpoint was trained with")
    calibrate.set_defaults(func=_calibrate)

    saliency = commands.add_parser("saliency", help="saliency overlays: where the pose comes from",
                                   description="Gradient of the pose with respect to the input pixels.")
    saliency.add_argument("--model", type=Path, required=True)
    saliency.add_argument("--data", type=Path, required=True)
    saliency.add_argument("--out", type=Path, required=True)
    saliency.add_argument("--split", default="test")
    saliency.add_argument("--frames", type=int, nargs="+", help="frame positions in the split (default: 4)")
    saliency.add_argument("--device", default="auto")
    saliency.set_defaults(func=_saliency)

    export = commands.add_parser("export", help="export the network as ONNX or TorchScript",
                                 description="Write the checkpoint's network (backbone and Monte-Carlo "
                                 "head, dropout masks as an input) as ONNX or TorchScript, check it against "
                                 "PyTorch, and print the difference. The node runs it with the parameter "
                                 "runtime:=onnx (or torchscript); see posenet_ros/runtime/export.py.")
    export.add_argument("--model", type=Path, required=True, help="checkpoint file or training folder")
    export.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    export.add_argument("--out", type=Path,
                        help="output file (default beside the checkpoint: model.onnx, model.torchscript.pt)")
    export.set_defaults(func=_export)

    _add_make_bag_parser(commands)
    _add_replay_parser(commands)
    _add_play_parser(commands)
    _add_echo_parser(commands)
    _add_node_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes the key=value overrides only before the first option that follows them; later
    # ones (`train ... epochs=2 --quiet lr=1e-3`) are overrides too.
    overrides = all("=" in item and not item.startswith("-") for item in extra)
    if extra and hasattr(args, "overrides") and overrides:
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
