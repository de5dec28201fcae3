"""The ARMT model: memory math, the segment loop, its steps (steps.py), backbones and checkpoints."""

from .armt import ARMTModel, ARMTOutput, MemoryState, SegmentOutput, split_segments
from .memory import dpfp, feature_map, read_memory, write_memory
from .steps import HFStep, SegmentStep, StepChoice, pick_step

__all__ = ["ARMTModel", "ARMTOutput", "MemoryState", "SegmentOutput", "split_segments",
           "dpfp", "feature_map", "read_memory", "write_memory",
           "SegmentStep", "HFStep", "StepChoice", "pick_step"]
