from illustrious.objectives.base import Objective
from illustrious.objectives.flow import FlowObjective
from illustrious.objectives.vp import DiscreteVPObjective, EpsilonObjective, VPredictionObjective

__all__ = ["Objective", "DiscreteVPObjective", "EpsilonObjective", "VPredictionObjective", "FlowObjective"]
