"""A pose covariance carried from one frame of a rigid body to another (camera -> robot base).

Convention (that of geometry_msgs/PoseWithCovariance and of the Relocalizer, inference/uncertainty.py):
the 6x6 covariance of a pose world_from_a is over (x, y, z, rot X, rot Y, rot Z), positions in metres
in the world frame and rotations in radians as a rotation vector δ about the fixed world axes,
perturbing the orientation on the left. A perturbed pose is

    R_wa = exp(δ) · R̄_wa,    t_wa = t̄_wa + ε,    (ε, δ) ~ N(0, Σ_a).

For a second frame b rigidly attached to a (a_from_b fixed, e.g. the camera -> base extrinsic),
world_from_b = world_from_a · a_from_b, so

    R_wb = exp(δ) · R̄_wb                       (the rotation error is unchanged)
    t_wb = t_wa + R_wa t_ab = t̄_wb + ε + (exp(δ) - I) r,   r = R̄_wa t_ab = t̄_wb - t̄_wa,

and to first order in δ, t_wb = t̄_wb + ε - [r]× δ: (ε_b, δ_b) = J (ε, δ) with
J = [[I, -[r]×], [0, I]], and Σ_b = J Σ_a Jᵀ. J is the SE(3) adjoint of the lever arm r written in
this convention: with left SE(3) perturbations T = exp(ξ^) T̄ (ξ = (ρ, δ)) a fixed right factor leaves ξ
unchanged, and the change of coordinates from ξ to (ε, δ) at a pose with translation t is
M(t) = [[I, -[t]×], [0, I]]; J = M(t̄_wb) · M(t̄_wa)⁻¹ = M(t̄_wb - t̄_wa). J is invertible
(J⁻¹ = M(-r)), so transport keeps a covariance positive definite and a Mahalanobis distance
(NEES) of a small error unchanged.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def skew(v_3: ArrayLike) -> np.ndarray:
    """The 3x3 cross-product matrix [v]×, so that [v]× u = v × u."""
    x, y, z = np.asarray(v_3, dtype=np.float64).reshape(3)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def covariance_transport_jacobian(world_from_a: ArrayLike, a_from_b: ArrayLike) -> np.ndarray:
    """J (6, 6) mapping the (x, y, z, rot X, rot Y, rot Z) error of world_from_a (4x4) to that of
    world_from_b = world_from_a · a_from_b (a_from_b a fixed 4x4 rigid transform); see the module
    docstring."""
    world_from_a = np.asarray(world_from_a, dtype=np.float64)
    lever_arm_3 = world_from_a[:3, :3] @ np.asarray(a_from_b, dtype=np.float64)[:3, 3]
    jacobian = np.eye(6)
    jacobian[:3, 3:] = -skew(lever_arm_3)
    return jacobian


def transport_covariance(covariance_66: ArrayLike, world_from_a: ArrayLike,
                         a_from_b: ArrayLike) -> np.ndarray:
    """The (6, 6) covariance of world_from_b = world_from_a · a_from_b given `covariance_66` of
    world_from_a (m², rad², the module's convention): J Σ Jᵀ, symmetric."""
    jacobian = covariance_transport_jacobian(world_from_a, a_from_b)
    transported = jacobian @ np.asarray(covariance_66, dtype=np.float64) @ jacobian.T
    return 0.5 * (transported + transported.T)
