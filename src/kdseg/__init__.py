"""kdseg: benchmark knowledge distillation from multi-modal to fewer-modal 3D segmentation nets."""

__version__ = "0.1.0"
