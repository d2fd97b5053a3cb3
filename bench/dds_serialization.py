"""CDR serialisation of a sensor_msgs/Image over Cyclone DDS: the fast path against the generic one.

    python bench/dds_serialization.py [--width 640] [--height 480] [--repeats 200] [--generic-repeats 5]

The DDS Image type is declared with `sequence[uint8]` data (so that its type information is ROS 2's)
and given a `serialize`/`deserialize` fast path through a twin class whose data is `bytes`
(posenet_ros/ros/dds_types.py; docs/design.md, "Runtimes and why"). This times both on one
WIDTHxHEIGHT rgb8 image: the fast path (what the node and `posenet-ros play` use) over REPEATS
rounds, the generic path of cyclonedds-python (`Type.__idl__.serialize` of a Python list of ints,
`__idl__.deserialize` to one) over GENERIC_REPEATS (it is slow), after one warm-up call each. The
tests check that both paths give the same bytes (test/ros/test_dds_types.py); this measures them.
Prints a table and writes JSON (default bench/results/dds_serialization.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from posenet_ros.ros.dds_types import dds_type, serialize


def timings_ms(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up: cyclonedds builds its serialisation machines on first use
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    values = 1e3 * np.asarray(times)
    return {"p50_ms": float(np.median(values)), "p99_ms": float(np.percentile(values, 99)), "n": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=200, help="rounds of the fast path")
    parser.add_argument("--generic-repeats", type=int, default=5, help="rounds of the generic path")
    parser.add_argument("--out", type=Path, default=Path("bench/results/dds_serialization.json"))
    args = parser.parse_args()
    image_type = dds_type("sensor_msgs/msg/Image")
    pixels = np.random.default_rng(2).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    image = image_type(height=args.height, width=args.width, encoding="rgb8", is_bigendian=0,
                       step=3 * args.width, data=pixels)
    image.header.stamp.sec, image.header.stamp.nanosec, image.header.frame_id = 1_700_000_000, 7, "cam"
    data = serialize(image)
    generic = image_type(header=image.header, height=args.height, width=args.width, encoding="rgb8",
                         step=3 * args.width, data=pixels.reshape(-1).tolist())
    if image_type.__idl__.serialize(generic, use_version_2=False) != data:
        raise SystemExit("the fast path's bytes differ from the generic path's")
    cases = {
        "fast path": {"serialise": timings_ms(lambda: serialize(image), args.repeats),
                      "deserialise": timings_ms(lambda: image_type.deserialize(data), args.repeats)},
        "generic sequence[uint8]": {
            "serialise": timings_ms(lambda: image_type.__idl__.serialize(generic, use_version_2=False),
                                    args.generic_repeats),
            "deserialise": timings_ms(lambda: image_type.__idl__.deserialize(data), args.generic_repeats)},
    }
    fast, slow = cases["fast path"], cases["generic sequence[uint8]"]
    results = {"image": f"{args.width}x{args.height} rgb8 ({len(data)} bytes CDR)", "cases": cases,
               "speedup": {step: slow[step]["p50_ms"] / fast[step]["p50_ms"] for step in ("serialise",
                                                                                        "deserialise")},
               "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    print(f"{results['image']}")
    print(f"{'path':<26}{'serialise p50':>15}{'p99 ms':>9}{'deserialise p50':>17}{'p99 ms':>9}")
    for name, case in cases.items():
        print(f"{name:<26}{case['serialise']['p50_ms']:>15.3f}{case['serialise']['p99_ms']:>9.3f}"
              f"{case['deserialise']['p50_ms']:>17.3f}{case['deserialise']['p99_ms']:>9.3f}")
    print(f"fast path: {results['speedup']['serialise']:.0f}x faster to serialise, "
          f"{results['speedup']['deserialise']:.0f}x to deserialise")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
