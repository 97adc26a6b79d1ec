"""Runs compiled per-batch functions over any subset of an evaluation set, and attacks in order.

`Runner.map` takes the positions to process, cuts them into chunks of at most `batch_size`, pads
each chunk to one of a few bucket sizes (so compaction never retraces), splits the padded batch
across the strategy's replicas and gathers the results. Per-example seeds are keyed by dataset
index, so the answer does not depend on the batch size, the chunking or the number of devices.

`run_attacks` is AutoAttack's driver: every attack (and every stage of it: restart, target class)
runs only on the points still robust, from the clean images, and a point is robust only if every
attack failed: the pointwise worst case. As the reference's driver, it checks every point an
attack returns with a fresh forward pass; a point is broken only if the attack claims it and that
pass agrees.
"""
import time

import numpy as np
import tensorflow as tf

from mma_tf import norms
from mma_tf.attacks.common import CLIP_MAX, CLIP_MIN
from mma_tf.evaluation.common import (bucket_size, is_correct, pad_positions,
                                     stream_example_seeds)


class Runner:
  """Compiled evaluation functions over padded, replica-split batches of a host dataset."""

  def __init__(self, batch_size, strategy=None, jit_compile=False):
    self.strategy = strategy or tf.distribute.get_strategy()
    self.replicas = self.strategy.num_replicas_in_sync
    if batch_size < 1 or batch_size % self.replicas:
      raise ValueError(f'The batch size ({batch_size}) must be a positive multiple of the number '
                       f'of replicas ({self.replicas}).')
    self.batch_size = batch_size
    self.jit_compile = jit_compile
    self._compiled = {}

  def _compile(self, key, fn):
    """The compiled fn, cached under `key` (None: compiled afresh, not cached)."""
    if key is None or key not in self._compiled:
      def replica_fn(*args):
        # All-gather has no bool kernel: masks travel as int32 (the host reads them as bool).
        return tuple(tf.cast(v, tf.int32) if v.dtype == tf.bool else v for v in fn(*args))

      strategy = self.strategy
      jit_compile = self.jit_compile

      def on_replica(*args):
        # XLA compiles what runs on one replica (one device), never around strategy.run; a new
        # tf.function per replica, since one shared trace would capture one device's variables.
        if jit_compile:
          return tf.function(replica_fn, jit_compile=True)(*args)
        return replica_fn(*args)

      @tf.function
      def step(args):
        out = strategy.run(on_replica, args=args)
        return tf.nest.map_structure(lambda v: strategy.gather(v, axis=0), out)

      if key is None:
        return step
      self._compiled[key] = step
    return self._compiled[key]

  def _distribute(self, arrays):
    if self.replicas == 1:
      return tuple(tf.constant(a) for a in arrays)
    per_replica = len(arrays[0]) // self.replicas

    def value_fn(ctx):
      lo = ctx.replica_id_in_sync_group * per_replica
      return tuple(tf.constant(a[lo:lo + per_replica]) for a in arrays)

    return self.strategy.experimental_distribute_values_from_function(value_fn)

  def map(self, key, fn, arrays, positions):
    """fn(*batch) -> tuple of [B, ...] tensors, run on arrays[k][positions]; returns NumPy outputs
    for `positions` in order. `key` names fn in the trace cache (one trace per bucket size;
    None: not cached)."""
    step = self._compile(key, fn)
    positions = np.asarray(positions)
    outputs = None
    for lo in range(0, len(positions), self.batch_size):
      chunk = positions[lo:lo + self.batch_size]
      size = bucket_size(len(chunk), self.batch_size, self.replicas)
      pad, _ = pad_positions(len(chunk), size)
      out = step(self._distribute([a[chunk[pad]] for a in arrays]))
      out = [np.asarray(o)[:len(chunk)] for o in out]
      outputs = [[] for _ in out] if outputs is None else outputs
      for acc, o in zip(outputs, out):
        acc.append(o)
    if outputs is None:
      return None
    return [np.concatenate(o) for o in outputs]


def _perturbation_norms(norm, x_adv, x):
  return norms.get_norm(norm).norm(tf.constant(x_adv - x)).numpy()


def run_stage(attack, predict, x, y, eps, seed, index, stage, *state):
  """One stage of `attack` (a restart, or the target of clean-logit rank stage + 2) as
  `run_attacks` runs it: seeded from the attack's stream, the stage and each example's dataset
  `index` under the evaluator's `seed`. Returns `attack.run_stage`'s outputs (x_adv, success,
  ...), so a script that reruns a stage gets the evaluator's result for each point."""
  seeds = stream_example_seeds(seed, attack.stream, index, stage)
  return attack.run_stage(predict, x, y, eps, seeds, stage, *state)


def run_attacks(runner, predict, attacks, images, labels, index, eps, start_robust, seed,
                num_classes, progress=None, checks=None):
  """Runs `attacks` in order at radius eps on the points marked in `start_robust`.

  Returns a dict: robust [N] (the worst case), broken_by [N] (index of the first attack that broke
  the point, -1 if none), adv_norm [N] (norm of the successful perturbation, nan if none),
  acc_after [per attack] (cumulative robust accuracy over all N), unconfirmed [per attack]
  (successes the attack claimed that a fresh forward pass did not confirm: randomness at
  inference, or a bug), seconds [per attack], facts [per attack] (what the attack reports at this
  radius, `Attack.continuation`).
  An attack's continuation (`Attack.continuation`, decided over all N with the model `checks`,
  `sanity.model_checks`) runs right after it, on the points still robust (those its
  select_stages picks, if it selects), and counts as it; its facts then add 'continued_points',
  how many points it ran on.
  An attack that returns a point outside the eps ball or the input box [CLIP_MIN, CLIP_MAX] (the
  attacks' default clip_min/clip_max) is a bug: it raises.
  """
  n = len(labels)
  robust = start_robust.copy()
  broken_by = np.full(n, -1, np.int32)
  adv_norm = np.full(n, np.nan, np.float32)
  eps_vec = np.full(n, eps, np.float32)
  acc_after, seconds, unconfirmed, facts = [], [], [], []

  def run_stages(attack, a_i, state):
    """Runs the attack's stages on the points still robust, each point from its `state` (per-point
    arrays, or None); returns the per-point state the stages returned ([N, ...] arrays) or None,
    and the number of points any stage ran on."""
    num_stages = attack.num_stages(num_classes)
    chosen = np.ones((n, num_stages), bool)
    if attack.selects_stages and robust.any():
      todo = np.nonzero(robust)[0]
      key = attack.cache_key()
      select = lambda x, y, e, *point_state, attack=attack: (attack.select_stages(
          predict, x, y, e, num_stages, *([point_state] if point_state else [])),)
      chosen[todo] = runner.map(key and ('select', key), select,
                                [images, labels, eps_vec] + list(state or ()), todo)[0]
    new_state, ran = None, robust & chosen.any(axis=1)
    for stage in range(num_stages):
      todo = np.nonzero(robust & chosen[:, stage])[0]
      if not todo.size:
        continue
      stage_vec = np.full(n, stage, np.int32)

      def fn(x, y, idx, e, stage_arg, *point_state, attack=attack, stage=stage):
        # Attacks that take the stage as a tensor trace once for all stages (target ranks).
        s = stage_arg[0] if attack.stage_is_tensor else stage
        x_adv, claimed, *returned = run_stage(attack, predict, x, y, e, seed, idx, s,
                                              *([point_state] if point_state else []))
        return (x_adv, claimed & tf.logical_not(is_correct(predict(x_adv), y)), claimed,
                *(returned[0] if returned else ()))

      # Equal keys mean equal computations (Attack.cache_key, the stage, the seed), so a runner
      # reused across evaluate() calls (evaluation.runner_for) reuses their traces.
      key = attack.cache_key()
      if key is not None:
        key = (key, None if attack.stage_is_tensor else stage, seed)
      x_adv, success, claimed, *returned = runner.map(
          key, fn, [images, labels, index, eps_vec, stage_vec] + list(state or ()), todo)
      if returned:
        new_state = new_state or [np.zeros((n,) + r.shape[1:], r.dtype) for r in returned]
        for whole, part in zip(new_state, returned):
          whole[todo] = part
      success, claimed = success.astype(bool), claimed.astype(bool)
      unconfirmed[-1] += int(np.sum(claimed & ~success))
      if claimed.any():  # every point an attack claims must be feasible, confirmed or not
        d = _perturbation_norms(attack.norm, x_adv[claimed], images[todo[claimed]])
        axes = tuple(range(1, x_adv.ndim))
        outside = ((d > eps * (1 + 1e-5) + 1e-6) | (x_adv[claimed].min(axis=axes) < CLIP_MIN)
                   | (x_adv[claimed].max(axis=axes) > CLIP_MAX))
        if outside.any():
          raise RuntimeError(f'{attack.name} returned {int(outside.sum())} point(s) outside the '
                             f'{attack.norm} ball of radius {eps:g} or [{CLIP_MIN:g}, '
                             f'{CLIP_MAX:g}] (largest norm {d.max():.6g}): a bug in the attack.')
        hit = todo[success]
        robust[hit] = False
        broken_by[hit] = a_i
        adv_norm[hit] = d[success[claimed]]
    return new_state, int(ran.sum())

  for a_i, attack in enumerate(attacks):
    start = time.perf_counter()
    unconfirmed.append(0)
    attacked = int(robust.sum())
    state, _ = run_stages(attack, a_i, None)
    then, attack_facts = attack.continuation(int(np.sum(broken_by == a_i)), attacked, checks)
    if then is not None:
      _, attack_facts['continued_points'] = run_stages(then, a_i, state)
      if progress:
        progress(f'eps {eps:g} {attack.name}: continued by {then.describe()} on '
                 f'{attack_facts["continued_points"]} point(s) ('
                 + '; '.join(f'{k}: {v}' for k, v in attack_facts.items()
                             if k != 'continued_points') + ')')
    facts.append(attack_facts)
    seconds.append(time.perf_counter() - start)
    acc_after.append(float(robust.mean()))
    if progress:
      progress(f'eps {eps:g} {attack.name}: robust accuracy {acc_after[-1]:.4f} '
               f'({seconds[-1]:.1f} s)')
  return {'robust': robust, 'broken_by': broken_by, 'adv_norm': adv_norm,
          'acc_after': acc_after, 'unconfirmed': unconfirmed, 'seconds': seconds, 'facts': facts}
