"""The paper's models and a small CNN; any Keras model mapping [0, 1] images to logits works."""
from mma_tf.models.lenet import lenet5_madry
