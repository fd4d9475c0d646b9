"""A static kernel model of the CuPy backend's CUDA C (``gpucnn kernels``): the Nsight-Compute-like view a
reader can have with no GPU. Every figure it prints is a model, not a measurement.

  gpus.py      published A100/H100/H200 facts and the CUDA occupancy calculator's rules
  launches.py  every launch of one training step, as the launchers choose it (no kernel runs)
  sass.py      nvcc + cuobjdump: registers, shared memory, spills; SASS, loops, the main loop's mix
  model.py     occupancy, waves, issue- and memory-bound time per launch; the report
  calls.py     the launches and predicted time of one call (record_call, predict_call; gpucnn bench's model column)
"""
from .calls import predict_call, record_call
from .gpus import GPUS, GPU, occupancy
from .model import format_report, run, totals

__all__ = ["GPUS", "GPU", "occupancy", "run", "format_report", "totals", "record_call", "predict_call"]
