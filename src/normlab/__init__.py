"""normlab: an experiment framework for normalization layers in convolutional networks."""

__version__ = "0.1.0"
