"""The metric behind fit()'s and evaluate()'s logs: sums of per-example statistics, summarized
by the objective (training) or as the Trainer's validation (evaluation)."""
import math

import keras
import numpy as np
import tensorflow as tf


class Statistics(keras.metrics.Metric):
  """Sums of named per-example statistics and their count; `result()` is `summarize(sums,
  count)` under fixed keys (NaN for a key summarize leaves out, e.g. avg_eps before any example
  is attacked). Read in a replica, the sums are all-reduced first, so every step's logs are the
  epoch's exact running values; read across replicas (at the end of an epoch) they add up."""

  def __init__(self, names, summarize, name):
    super().__init__(name=name)
    self.names, self.summarize = tuple(names), summarize
    self.keys = tuple(summarize({n: 1.0 for n in self.names}, 1.0))
    self.sums = self.add_variable(shape=[len(self.names) + 1], initializer='zeros',
                                  name='sums')

  def update_state(self, sums, count):
    self.sums.assign_add(tf.stack([tf.cast(sums[n], tf.float32) for n in self.names]
                                  + [tf.cast(count, tf.float32)]))

  def _results(self, values):
    values = [float(v) for v in values]
    got = self.summarize(dict(zip(self.names, values)), values[-1]) if values[-1] > 0 else {}
    return [float(got.get(k, math.nan)) for k in self.keys]

  def result(self):
    values = tf.convert_to_tensor(self.sums)
    context = tf.distribute.get_replica_context()
    if tf.distribute.has_strategy() and context is not None:
      values = context.all_reduce(tf.distribute.ReduceOp.SUM, values)
    if tf.executing_eagerly():
      return dict(zip(self.keys, self._results(values.numpy())))
    out = tf.numpy_function(lambda v: np.array(self._results(v), np.float32), [values],
                            tf.float32, stateful=False)
    return dict(zip(self.keys, tf.unstack(tf.ensure_shape(out, [len(self.keys)]))))

  def reset_state(self):
    self.sums.assign(tf.zeros_like(self.sums))

