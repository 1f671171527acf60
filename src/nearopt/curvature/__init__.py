"""Curvature operators: one base class (:class:`Curvature`), batch and population curvatures, and the
wrappers that compose the options of a problem (trained blocks, ``x ~ N(0, Sigma)``) around them.

========================  ==============================================================
module                    holds
========================  ==============================================================
``base``                  :class:`Curvature`: the LinearOperator, its capabilities, ``spectrum``
``compose``               :class:`Restricted`, :class:`Congruence`, :class:`Composed`
``batch``                 :class:`BatchGaussNewton`, :class:`BatchHessian`, Jacobians
``assembly``              dense population blocks from pair moments (at the teacher)
``product``               :class:`PopulationProduct`: matrix-free product and preconditioner
``student``               the Hessian at any student point: product and dense blocks
``structured``            the one structured reduction (every point, law, trained block)
``population``            :class:`PopulationHessian`, :func:`population_spectrum`
``costs``                 the cost model of ``auto``
``deep_linear``           :class:`DeepLinearHessian`: deep linear networks ``W_L ... W_1 x``
``tracking``              :func:`track_curvature`: the Hessian along a trajectory (:class:`CurvatureTrack`)
========================  ==============================================================
"""

from .assembly import assemble, net_moments, rescaling_modes
from .base import Curvature, resolve_device
from .batch import (
    BATCH_METHODS,
    SVD_MAX_PARAMS,
    BatchGaussNewton,
    BatchHessian,
    batch_hvp,
    batch_spectrum,
    functional_hessian,
    gauss_newton,
    gauss_newton_tensor,
    iter_jacobian_chunks,
    jacobian,
    jacobian_r_factor,
    loss_hessian,
)
from .compose import Composed, Congruence, Restricted
from .deep_linear import DeepLinearHessian, deep_linear_rank
from .population import POPULATION_METHODS, PopulationHessian, population_hessian, population_spectrum
from .product import PopulationProduct
from .structured import StructuredSpectrum, structured_spectrum
from .student import LandscapeProduct, assemble_landscape
from .tracking import CurvatureTrack, TrackSpec, track_curvature

__all__ = [
    "BATCH_METHODS",
    "POPULATION_METHODS",
    "SVD_MAX_PARAMS",
    "BatchGaussNewton",
    "BatchHessian",
    "Composed",
    "Congruence",
    "Curvature",
    "CurvatureTrack",
    "DeepLinearHessian",
    "LandscapeProduct",
    "PopulationHessian",
    "PopulationProduct",
    "Restricted",
    "TrackSpec",
    "StructuredSpectrum",
    "assemble",
    "assemble_landscape",
    "batch_hvp",
    "batch_spectrum",
    "deep_linear_rank",
    "functional_hessian",
    "gauss_newton",
    "gauss_newton_tensor",
    "iter_jacobian_chunks",
    "jacobian",
    "jacobian_r_factor",
    "loss_hessian",
    "net_moments",
    "population_hessian",
    "population_spectrum",
    "rescaling_modes",
    "resolve_device",
    "structured_spectrum",
    "track_curvature",
]
