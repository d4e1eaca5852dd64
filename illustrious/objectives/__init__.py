from illustrious.objectives.base import Objective
from illustrious.objectives.flow import FlowObjective, FlowXPrediction
from illustrious.objectives.noise import GaussianNoise
from illustrious.objectives.timesteps import (
    BiasedUniform,
    LogitNormal,
    ModeSampling,
    TimestepSampler,
    Uniform,
)
from illustrious.objectives.vp import DiscreteVPObjective, EpsilonObjective, VPredictionObjective
from illustrious.objectives.weighting import DebiasedEstimation, MinSNR, VelocityLoss

__all__ = [
    "Objective", "DiscreteVPObjective", "EpsilonObjective", "VPredictionObjective", "FlowObjective", "FlowXPrediction",
    "TimestepSampler", "Uniform", "LogitNormal", "ModeSampling", "BiasedUniform", "MinSNR", "DebiasedEstimation", "VelocityLoss", "GaussianNoise",
]
