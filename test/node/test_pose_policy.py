"""node/pose_policy.py and node/initial_pose.py: which poses the node publishes and why not, and when
it sends one to initialpose; through the real pipeline with a real Relocalizer, and across processes
over Cyclone DDS (trigger -> exactly one initialpose; re-initialisation after being lost).

The test checkpoint (node_support.make_checkpoint) flags a place known after 2 frames of a stream
(loop-closure min_frames 2, every finite score qualifies), so the first frame of a stream, and every
frame after a stamp gap longer than reset_gap (which resets the stream), is an unknown place.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from dds_support import POSE_TYPE, TIMEOUT_S, domain_id, send_until, start_node
from node_support import TYPES, make_checkpoint, rgb_frame, stamp

from posenet_ros.node.initial_pose import InitialPoseTrigger
from posenet_ros.node.parameters import NodeSettings
from posenet_ros.node.pipeline import OUTPUTS, RelocalizationPipeline, build_relocalizer
from posenet_ros.node.pose_policy import PosePolicy, calibrated_sigma_limits, policy_limits, pose_sigmas
from posenet_ros.ros.conversions import covariance_from_msg, image_msg, pose_from_msg, stamp_to_ns
from posenet_ros.ros.dds import DdsNode, loopback_config
from posenet_ros.ros.dds_types import from_dds
from posenet_ros.runtime.checkpoint import calibration_report, store_calibration
from posenet_ros.runtime.relocalizer import Relocalizer

GAP_NS = 5_000_000_000  # past reset_gap (1 s): the stream resets, the frame is an unknown place


def covariance(sigma_position_m: float, sigma_rotation_deg: float) -> np.ndarray:
    """A diagonal 6x6 covariance with these √trace of its position and rotation blocks."""
    return np.diag([sigma_position_m**2 / 3] * 3 + [math.radians(sigma_rotation_deg) ** 2 / 3] * 3)


# --------------------------------------------------------------------------------------------------
# The policy and the trigger alone
# --------------------------------------------------------------------------------------------------


def test_sigmas_are_the_root_traces_in_metres_and_degrees():
    assert pose_sigmas(covariance(0.3, 12.0)) == pytest.approx((0.3, 12.0))
    full = np.zeros((6, 6))
    full[:3, :3] = [[0.04, 0.01, 0], [0.01, 0.05, 0], [0, 0, 0.07]]
    full[3:, 3:] = np.eye(3) * 0.01
    assert pose_sigmas(full) == pytest.approx((math.sqrt(0.16), math.degrees(math.sqrt(0.03))))
    assert all(math.isnan(value) for value in pose_sigmas(np.full((6, 6), np.nan)))


@pytest.mark.parametrize(("known", "sigmas", "reason"), [
    (False, (0.1, 1.0), "unknown_place"),
    (False, (9.0, 90.0), "unknown_place"),  # the first failed check is the reason
    (True, (0.51, 1.0), "position_sigma"),
    (True, (0.51, 21.0), "position_sigma"),
    (True, (0.5, 20.5), "rotation_sigma"),
    (True, (0.5, 20.0), "confident"),  # the limits themselves pass
])
def test_the_first_failed_check_is_the_reason_and_only_confident_poses_are_published(known, sigmas, reason):
    strict = PosePolicy(max_position_sigma_m=0.5, max_rotation_sigma_deg=20.0)
    decision = strict.decide(known, covariance(*sigmas))
    assert decision.reason == reason and decision.published == (reason == "confident")
    assert (decision.sigma_position_m, decision.sigma_rotation_deg) == pytest.approx(sigmas)
    everything = PosePolicy(0.5, 20.0, publish_unknown=True).decide(known, covariance(*sigmas))
    assert everything.reason == reason and everything.published


def test_a_nan_covariance_is_not_confident():
    assert PosePolicy().decide(True, np.full((6, 6), np.nan)).reason == "position_sigma"


def test_default_limits_are_the_calibration_frames_99th_percentile():
    sigmas = np.linspace(0.01, 1.0, 100)
    limits = calibrated_sigma_limits(np.stack([covariance(s, 100 * s) for s in sigmas]))
    assert limits == pytest.approx({"position_m": np.percentile(sigmas, 99),
                                    "rotation_deg": np.percentile(100 * sigmas, 99), "percentile": 99.0})
    report = {"sigma_limits": limits}
    assert policy_limits(math.nan, math.nan, report)[:2] == pytest.approx((limits["position_m"],
                                                                           limits["rotation_deg"]))
    assert policy_limits(0.2, math.nan, report)[:2] == pytest.approx((0.2, limits["rotation_deg"]))
    assert policy_limits(math.nan, math.inf, {})[:2] == (math.inf, math.inf)  # none stored: no limit


def test_the_trigger_sends_the_next_confident_pose_once():
    trigger = InitialPoseTrigger()
    assert [trigger.update(c) for c in (True, False)] == [None, None]  # nothing asked
    assert trigger.request() and not trigger.request()  # a second request while one waits: one pose
    assert [trigger.update(c) for c in (False, False, True, True)] == [None, None, "request", None]


def test_at_start_and_after_being_lost_for_n_frames():
    trigger = InitialPoseTrigger(at_start=True, lost_frames=2)
    # unconfident at start: not lost (never localized), the start request waits
    assert [trigger.update(c) for c in (False, False, False, True, True)] == [None] * 3 + ["start", None]
    # one unconfident frame is not lost; two are, once, whatever follows
    assert [trigger.update(c) for c in (False, True)] == [None, None]
    outcomes = [trigger.update(c) for c in (False, False, False, False, True, True)]
    assert outcomes == [None] * 4 + ["lost", None]
    assert [trigger.update(c) for c in (False, True)] == [None, None]
    assert InitialPoseTrigger(lost_frames=0).update(True) is None
    with pytest.raises(ValueError, match="lost_frames"):
        InitialPoseTrigger(lost_frames=-1)


# --------------------------------------------------------------------------------------------------
# In the pipeline
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("policy") / "model.safetensors")


def make_pipeline(model_path, **settings):
    """A pipeline publishing into a list, of the camera's pose (no TF; with publish_tf map -> camera)."""
    sent: list[tuple[str, object]] = []
    node_settings = NodeSettings(model=str(model_path), device="cpu",
                                 **{"base_frame": "", "tf_mode": "map_camera", **settings})
    pipeline = RelocalizationPipeline(node_settings, build_relocalizer(node_settings), TYPES,
                                      lambda name, msg: sent.append((name, msg)))
    return pipeline, sent


def outputs(sent, name):
    return [msg for key, msg in sent if key == name]


def status_values(msg) -> dict[str, str]:
    (status,) = msg.status
    values = {kv.key: kv.value for kv in status.values}
    return {"message": status.message, "level": int(status.level), **values}


def run_frames(pipeline, stamps_ns: list[int]) -> None:
    for i, stamp_ns in enumerate(stamps_ns):
        pipeline.on_image(image_msg(TYPES, rgb_frame(i), stamp_ns, "camera_optical", "rgb8"))
        assert pipeline.process_next(timeout=0) is not None


def test_unknown_frames_are_withheld_and_the_status_says_why(model_path):
    pipeline, sent = make_pipeline(model_path, publish_tf=True)
    stamps = [stamp(0), stamp(1), stamp(2), stamp(2) + GAP_NS, stamp(2) + GAP_NS + 100_000_000]
    run_frames(pipeline, stamps)
    assert [stamp_to_ns(p.header.stamp) for p in outputs(sent, "pose")] == [stamps[1], stamps[2], stamps[4]]
    assert len(outputs(sent, "tf")) == 3  # the transform goes with the pose
    # flag and uncertainty for every frame: the node is alive
    assert [m.data for m in outputs(sent, "loop_closure")] == [False, True, True, False, True]
    assert len(outputs(sent, "uncertainty")) == 5
    statuses = [status_values(m) for m in outputs(sent, "status")]
    assert [stamp_to_ns(m.header.stamp) for m in outputs(sent, "status")] == stamps
    assert [s["message"] for s in statuses] == ["unknown_place", "confident", "confident", "unknown_place",
                                                "confident"]
    assert [s["published"] for s in statuses] == ["false", "true", "true", "false", "true"]
    assert [s["level"] for s in statuses] == [1, 0, 0, 1, 0]  # WARN, OK
    assert statuses[0]["max_position_sigma_m"] == "inf"  # the test checkpoint stores no σ limits
    reference = Relocalizer(model_path, device="cpu").process(rgb_frame(0), stamp_ns=stamps[0])
    assert float(statuses[0]["sigma_position_m"]) == pytest.approx(reference.uncertainty_m, rel=1e-5)
    counts = pipeline.publish_diagnostics()
    assert counts["processed"] == 5
    assert counts["withheld_unknown_place"] == counts["withheld_in_period"] == 2
    assert "2 withheld" in status_values(outputs(sent, "diagnostics")[-1])["message"]


def test_poses_over_the_sigma_limits_are_withheld(model_path):
    sigma = Relocalizer(model_path, device="cpu").process(rgb_frame(1), stamp_ns=stamp(1)).uncertainty_m
    pipeline, sent = make_pipeline(model_path, max_position_sigma=sigma / 2)
    run_frames(pipeline, [stamp(0), stamp(1)])
    assert outputs(sent, "pose") == []
    reasons = [status_values(m)["message"] for m in outputs(sent, "status")]
    assert reasons == ["unknown_place", "position_sigma"]
    pipeline, sent = make_pipeline(model_path, max_position_sigma=sigma / 2, publish_unknown=True)
    run_frames(pipeline, [stamp(0), stamp(1)])  # published as before the policy, reason still given
    assert len(outputs(sent, "pose")) == 2
    assert [status_values(m)["published"] for m in outputs(sent, "status")] == ["true", "true"]
    assert pipeline.diagnostics.counts["withheld_position_sigma"] == 0


def test_the_checkpoints_calibrated_limits_are_the_default(model_path, tmp_path):
    path = make_checkpoint(tmp_path / "model.safetensors")
    relocalizer = Relocalizer(path, device="cpu")
    store_calibration(path, relocalizer.uncertainty, relocalizer.loop_closure,
                      {"sigma_limits": {"position_m": 0.25, "rotation_deg": 7.5, "percentile": 99.0}})
    assert calibration_report(path)["sigma_limits"]["position_m"] == 0.25
    pipeline, _ = make_pipeline(path)
    assert (pipeline.policy.max_position_sigma_m, pipeline.policy.max_rotation_sigma_deg) == (0.25, 7.5)
    pipeline, _ = make_pipeline(path, max_rotation_sigma=math.inf)
    assert (pipeline.policy.max_position_sigma_m, pipeline.policy.max_rotation_sigma_deg) == (0.25, math.inf)


def test_a_request_sends_the_next_confident_pose_once_to_initialpose(model_path):
    pipeline, sent = make_pipeline(model_path)
    assert "next confident pose goes to initialpose" in pipeline.request_relocalization()
    pipeline.on_relocalize(TYPES.get("std_msgs/msg/Empty")())  # a second request: still one pose
    run_frames(pipeline, [stamp(0), stamp(1), stamp(2)])
    (initial,) = outputs(sent, "initial_pose")
    first_pose = outputs(sent, "pose")[0]
    assert initial is first_pose  # the message of /relocalized_pose, frame map
    assert stamp_to_ns(initial.header.stamp) == stamp(1) and initial.header.frame_id == "map"
    assert [status_values(m)["initial_pose"] for m in outputs(sent, "status")] == ["false", "true", "false"]
    assert pipeline.diagnostics.counts["initial_poses"] == 1


def test_initialpose_at_start_and_after_being_lost(model_path):
    pipeline, sent = make_pipeline(model_path, initial_pose_at_start=True, initial_pose_lost_frames=2)
    lost = [stamp(1) + k * GAP_NS for k in (1, 2)]  # two frames after gaps: unknown places
    stamps = [stamp(0), stamp(1), stamp(2), *lost, lost[-1] + 100_000_000, lost[-1] + 200_000_000]
    run_frames(pipeline, stamps)
    initial = outputs(sent, "initial_pose")
    assert [stamp_to_ns(m.header.stamp) for m in initial] == [stamps[1], stamps[5]]
    np.testing.assert_allclose(covariance_from_msg(initial[1]), covariance_from_msg(outputs(sent, "pose")[2]))
    assert OUTPUTS["initial_pose"].type_name == POSE_TYPE and OUTPUTS["initial_pose"].name == "initialpose"


# --------------------------------------------------------------------------------------------------
# Across processes, over Cyclone DDS
# --------------------------------------------------------------------------------------------------


def test_trigger_and_re_initialisation_over_dds(tmp_path):
    """`posenet-ros node` in its own process: a std_msgs/Empty on relocalization/relocalize sends the
    next confident pose, exactly once, to /initialpose; after initial_pose_lost_frames (2) unconfident
    frames the next confident pose goes there again. Unknown frames get no /relocalized_pose."""
    model = make_checkpoint(tmp_path / "model.safetensors")
    domain = domain_id(11)
    node = start_node(model, domain, "--param", "publish_unknown:=false", "--param",
                      "initial_pose_lost_frames:=2")
    condition = threading.Condition()
    received: dict[str, list] = {"pose": [], "initial_pose": [], "status": []}

    def sink(name):
        def callback(sample) -> None:
            with condition:
                received[name].append(from_dds(sample, OUTPUTS[name].type_name))
                condition.notify_all()
        return callback

    def answered(stamp_ns: int) -> bool:
        return any(stamp_to_ns(m.header.stamp) == stamp_ns for m in received["status"])

    warm_up_ns = stamp(0) - 100 * GAP_NS
    stamps = [stamp(0), stamp(1), stamp(2), stamp(2) + GAP_NS, stamp(2) + 2 * GAP_NS,
              stamp(2) + 2 * GAP_NS + 100_000_000, stamp(2) + 2 * GAP_NS + 200_000_000]
    try:
        with DdsNode("policy_test", domain_id=domain, config=loopback_config()) as dds:
            for name in received:
                topic = OUTPUTS[name]
                dds.subscription("/" + topic.name, topic.type_name, topic.qos, sink(name))
            camera = dds.publisher("/camera/image_raw", "sensor_msgs/msg/Image", "sensor_data")
            trigger = dds.publisher("/relocalization/relocalize", "std_msgs/msg/Empty", "default")
            assert camera.wait_for_subscribers(1, TIMEOUT_S) and trigger.wait_for_subscribers(1, TIMEOUT_S)
            # Warm-up frames until the node answers one: no frame below is lost to discovery.
            send_until(lambda k: camera.publish(image_msg(TYPES, rgb_frame(0), warm_up_ns + k * 100_000_000,
                                                          "camera_optical", "rgb8")),
                       condition, lambda: bool(received["status"]))
            for _ in range(int(TIMEOUT_S)):  # a reliable sample may precede the node's discovery of us
                trigger.publish(TYPES.get("std_msgs/msg/Empty")())
                try:
                    node.wait_for_line("relocalization requested", timeout=1.0)
                    break
                except AssertionError:
                    assert node.popen.poll() is None, "".join(node.lines)
            else:
                raise AssertionError("the node never logged the relocalization request")
            for i, stamp_ns in enumerate(stamps):
                frame = image_msg(TYPES, rgb_frame(i), stamp_ns, "camera_optical", "rgb8")
                send_until(lambda k, frame=frame: camera.publish(frame), condition,
                           lambda stamp_ns=stamp_ns: answered(stamp_ns))
            with condition:  # a frame's status goes first: wait for the last pose and both initial poses
                assert condition.wait_for(lambda: len(received["initial_pose"]) >= 2 and any(
                    stamp_to_ns(m.header.stamp) == stamps[-1] for m in received["pose"]), TIMEOUT_S)
    finally:
        assert node.stop() == 0, "".join(node.lines)
    counts = dict(pair.rsplit(" ", 1) for pair in node.lines[-1].removeprefix("node: ").strip().split(", "))
    assert counts["initial_poses"] == "2"  # what the node sent: exactly two
    # frame 0 (after the warm-up's gap) and the two frames after gaps are unknown places
    published = [stamp_to_ns(m.header.stamp) for m in received["pose"]]
    assert [s for s in published if s >= stamps[0]] == [stamps[1], stamps[2], stamps[5], stamps[6]]
    assert [stamp_to_ns(m.header.stamp) for m in received["initial_pose"]] == [stamps[1], stamps[5]]
    for initial in received["initial_pose"]:
        (pose,) = [m for m in received["pose"] if m.header.stamp == initial.header.stamp]
        assert initial.header.frame_id == pose.header.frame_id == "map"
        for a, b in zip(pose_from_msg(initial), pose_from_msg(pose), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(covariance_from_msg(initial), covariance_from_msg(pose))
    reasons = {stamp_to_ns(m.header.stamp): status_values(m)["message"] for m in received["status"]}
    assert [reasons[s] for s in stamps] == ["unknown_place", "confident", "confident", "unknown_place",
                                            "unknown_place", "confident", "confident"]
