"""mma_tf: Max-Margin Adversarial (MMA) training for TensorFlow / Keras (Ding et al., ICLR 2020)."""
__version__ = '0.1.0'
