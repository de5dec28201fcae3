"""The ARMT model: memory math, the segment loop, backbones and checkpoints."""

from .armt import ARMTModel, ARMTOutput, MemoryState, SegmentOutput, split_segments
from .memory import dpfp, feature_map, read_memory, write_memory

__all__ = ["ARMTModel", "ARMTOutput", "MemoryState", "SegmentOutput", "split_segments",
           "dpfp", "feature_map", "read_memory", "write_memory"]
