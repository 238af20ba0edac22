"""Progressive-shrinking training of a supernet (stages, KD, BN recalibration, DDP, exact resume)."""
from ofa.training.evaluate import evaluate_arch, evaluate_subnets, subnets_to_report
from ofa.training.loop import train
from ofa.training.schedule import STAGES, Phase, TrainConfig, stage_phases

__all__ = ["STAGES", "Phase", "TrainConfig", "evaluate_arch", "evaluate_subnets", "stage_phases",
           "subnets_to_report", "train"]
