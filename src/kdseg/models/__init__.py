"""Networks: MONAI DynUNet (nnU-Net-style 3D U-Net) with named feature taps."""

from kdseg.models.factory import FeatureTaps, NetOutput, build_network, forward_with_taps

__all__ = ["FeatureTaps", "NetOutput", "build_network", "forward_with_taps"]
