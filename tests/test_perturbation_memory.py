"""Perturbation memory (--perturbation_memory): warm starts of the training attacks from each
example's last perturbation, kept per example index through steps, replicas and checkpoints."""
import numpy as np
import pytest
import tensorflow as tf

from helpers import LinearProblem, tiny_config, warm_start
from mma_tf import data as data_lib
from mma_tf import norms
from mma_tf import objectives as objectives_lib
from mma_tf import trainer as trainer_lib
from mma_tf.attacks import anpgd, pgd
from test_distributed import _launch, _results

QUIET = lambda m: None


def _config(**overrides):
  fields = dict(model='small_cnn', batch_size=16, optimizer='sgd', learning_rate=0.05,
                momentum=0.9, perturbation_memory=True, nb_iter=2)
  fields.update(overrides)
  if fields['optimizer'] != 'sgd':
    del fields['momentum']
  return tiny_config(**fields)


def _memory(trainer):
  memory = trainer.task.perturbation_memory
  return memory.stored().numpy(), memory.known.numpy()


def _state(trainer):
  memory = list(_memory(trainer)) if trainer.task.perturbation_memory else []
  weights = [v.numpy() for v in trainer.task.model.weights]
  return weights + [trainer.task.eps_memory.numpy()] + memory


def _batch_indices(trainer, epoch, steps):
  """The example indices of the first `steps` global batches of `epoch` (the trainer's order)."""
  c = trainer.config
  batches = data_lib.train_dataset(trainer.task.data, c.batch_size, c.seed, epoch)
  return [b['index'].numpy() for b in batches.take(steps)]


# ------------------------------------------------------------------------------ the loop
def test_without_a_stored_perturbation_a_step_is_the_step_without_memory(data8, warm_weights,
                                                                         tmp_path):
  """Step 1 knows no perturbation: every example starts at random, as without the memory, so the
  two runs agree bit for bit; the memory then holds the batch's attacked rows and nothing else."""
  # The same step for both (with the memory on, the default PGD step is 0.5 eps).
  off = trainer_lib.Trainer(_config(perturbation_memory=False, eps_iter_scale=1.0),
                            str(tmp_path / 'off'), data=data8, log=QUIET)
  on = trainer_lib.Trainer(_config(eps_iter_scale=1.0), str(tmp_path / 'on'), data=data8,
                           log=QUIET)
  warm_start([off, on], warm_weights)
  out_off = off.task.train_step(iter(off.task.train_batches(0)))
  out_on = on.task.train_step(iter(on.task.train_batches(0)))
  for a, b in zip(_state(off), _state(on)[:-2]):
    np.testing.assert_array_equal(a, b)
  assert float(out_off['total_loss']) == float(out_on['total_loss'])
  table, known = _memory(on)
  batch, = _batch_indices(on, 0, 1)
  attacked = batch[out_on['eps'].numpy() > 0]  # MMA attacks the SLM-correct examples only
  assert attacked.size >= 8
  assert set(np.nonzero(known)[0]) == set(attacked)
  assert np.all(np.abs(table[attacked]).reshape(attacked.size, -1).max(1) > 0)
  others = np.setdiff1d(np.arange(len(known)), attacked)
  assert not np.any(table[others])


@pytest.mark.parametrize('objective', ['mma', 'pgd_at', 'trades'])
def test_memory_rows_change_only_for_the_batch(objective, data8, warm_weights, tmp_path):
  trainer = trainer_lib.Trainer(_config(objective=objective), str(tmp_path), data=data8,
                                log=QUIET)
  warm_start([trainer], warm_weights)
  iterator = iter(trainer.task.train_batches(0))
  before = _memory(trainer)
  for batch in _batch_indices(trainer, 0, 3):
    trainer.task.train_step(iterator)
    after = _memory(trainer)
    others = np.setdiff1d(np.arange(len(before[1])), batch)
    np.testing.assert_array_equal(after[0][others], before[0][others])
    np.testing.assert_array_equal(after[1][others], before[1][others])
    assert np.all(after[1][batch] >= before[1][batch])  # a known row stays known
    if objective != 'mma':  # PGD-AT and TRADES attack every example
      assert np.all(after[1][batch])
    before = after
  eps = trainer.config.hinge_maxeps * 1.05 if objective == 'mma' else trainer.config.pgd_eps
  assert np.abs(before[0]).max() <= eps * (1 + 1e-3)  # Linf: inside the largest ball


def test_resume_with_memory_equals_uninterrupted(data8, warm_weights, tmp_path,
                                                 op_determinism):  # noqa: F811
  config = _config(train_steps=24, checkpoint_every=5, deterministic=True, optimizer='adam',
                   learning_rate=1e-2)
  full = trainer_lib.Trainer(config, str(tmp_path / 'full'), data=data8, log=QUIET)
  part_dir = str(tmp_path / 'part')
  part = trainer_lib.Trainer(_config(train_steps=13, checkpoint_every=5, deterministic=True,
                                     optimizer='adam', learning_rate=1e-2),
                             part_dir, data=data8, log=QUIET)
  warm_start([full, part], warm_weights)  # most examples correct: MMA attacks them
  full.train()
  part.train()
  resumed = trainer_lib.Trainer(config, part_dir, data=data8, log=QUIET)
  assert resumed.restore() == 13
  resumed.train()
  assert full.task.perturbation_memory.known.numpy().sum() > 100
  for a, b in zip(_state(full), _state(resumed)):
    np.testing.assert_array_equal(a, b)


def test_two_replicas_keep_the_memory_of_one_device(data8, warm_weights, tmp_path,
                                                    two_cpu_strategy):
  one = trainer_lib.Trainer(_config(), str(tmp_path / 'one'), data=data8, log=QUIET)
  two = trainer_lib.Trainer(_config(), str(tmp_path / 'two'), two_cpu_strategy, data=data8,
                            log=QUIET)
  warm_start([one, two], warm_weights)
  for trainer in (one, two):  # the second epoch's steps start from the first epoch's rows
    for epoch in range(2):
      iterator = iter(trainer.task.train_batches(epoch))
      for _ in range(trainer.steps_per_epoch):
        trainer.task.train_step(iterator)
  (table1, known1), (table2, known2) = _memory(one), _memory(two)
  np.testing.assert_array_equal(known1, known2)
  assert known1.sum() > 100
  # Perturbations of the same weights up to float rounding.
  np.testing.assert_allclose(table1, table2, atol=2e-3)
  components = [v.numpy() for v in two.task.perturbation_memory.table.values]  # per replica
  np.testing.assert_array_equal(components[0], components[1])  # replicas hold one table


@pytest.mark.slow  # two worker processes (CI: --runslow)
@pytest.mark.processes
def test_two_workers_hold_the_same_memory_and_resume_it(tmp_path):
  """MultiWorkerMirroredStrategy on two local processes: identical tables after training, and
  after a restart both workers restore the chief's table."""
  run, config = tmp_path / 'run', {'perturbation_memory': True, 'nb_iter': 2}
  a, b = _results(_launch([run, 30, 10], config))
  assert a['perturbation_known'] > 50 and a['weights_sha'] == b['weights_sha']
  assert a['perturbation_memory_sha'] == b['perturbation_memory_sha']
  a2, b2 = _results(_launch([run, 35, 10], config))
  assert a2['restored']['perturbation_memory_sha'] == a['perturbation_memory_sha']
  assert b2['restored']['perturbation_memory_sha'] == a['perturbation_memory_sha']
  assert a2['perturbation_memory_sha'] == b2['perturbation_memory_sha']


def test_a_loop_keeps_the_memory_of_single_steps(data8, warm_weights, tmp_path,
                                                 op_determinism):  # noqa: F811
  trainers = [trainer_lib.Trainer(_config(deterministic=True), str(tmp_path / str(i)),
                                  data=data8, log=QUIET) for i in range(2)]
  warm_start(trainers, warm_weights)
  single, looped = trainers
  iterator = iter(single.task.train_batches(0))
  for _ in range(4):
    single.task.train_step(iterator)
  looped.task.train_loop(iter(looped.task.train_batches(0)), tf.constant(4, tf.int64))
  assert single.task.perturbation_memory.known.numpy().sum() > 30
  for a, b in zip(_state(single), _state(looped)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # XLA compilation: off by default, slow to compile on CPUs (CI: --runslow)
def test_the_xla_step_keeps_the_memory_of_the_default_step(data8, warm_weights, tmp_path):
  trainers = [trainer_lib.Trainer(_config(jit_compile=jit), str(tmp_path / str(jit)), data=data8,
                                  log=QUIET) for jit in (False, True)]
  warm_start(trainers, warm_weights)
  for trainer in trainers:
    iterator = iter(trainer.task.train_batches(0))
    for _ in range(3):
      trainer.task.train_step(iterator)
  (table, known), (xla_table, xla_known) = [_memory(t) for t in trainers]
  assert known.sum() > 20
  np.testing.assert_array_equal(known, xla_known)
  np.testing.assert_allclose(table, xla_table, atol=2e-3)


def test_mixed_float16_runs_with_the_memory(data8, tmp_path):
  trainer = trainer_lib.Trainer(_config(mixed_precision='mixed_float16', objective='pgd_at'),
                                str(tmp_path), data=data8, log=QUIET)
  iterator = iter(trainer.task.train_batches(0))
  for _ in range(2):
    assert np.isfinite(float(trainer.task.train_step(iterator)['total_loss']))
  table, known = _memory(trainer)
  assert known.sum() == 32 and np.all(np.isfinite(table)) and np.abs(table).max() > 0


# ------------------------------------------------------------------------------ the attacks
def _optimal_direction(problem, norm):
  """The direction of each example's shortest perturbation (to its nearest class)."""
  x = problem.x.reshape(len(problem.y), -1)
  z = x @ problem.w + problem.b
  out = []
  for i, y in enumerate(problem.y):
    diffs = problem.w - problem.w[:, [y]]
    dual = (np.abs(diffs).sum(0) if norm == 'Linf' else np.linalg.norm(diffs, axis=0))
    with np.errstate(divide='ignore', invalid='ignore'):
      m = np.where(np.arange(len(z[i])) == y, np.inf, (z[i, y] - z[i]) / dual)
    d = diffs[:, int(np.argmin(m))]
    out.append(np.sign(d) if norm == 'Linf' else d / np.linalg.norm(d))
  return np.stack(out).reshape(problem.x.shape).astype(np.float32)


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_a_stored_perturbation_across_the_boundary_gives_the_exact_margin(norm):
  """Stored along the shortest direction, beyond the boundary at the current eps: the first PGD
  step already succeeds and the bisection returns the analytic margin. With a random start the
  same small step does not find it."""
  problem = LinearProblem(norm, num_classes=3, batch=12, max_margin=0.25)
  eps0 = tf.constant(1.3 * problem.margin)
  stored = _optimal_direction(problem, norm) * norms.per_example(
      eps0, tf.constant(problem.x)).numpy()
  known = tf.ones([12], tf.bool)
  kwargs = dict(maxeps=0.5, norm=norm, nb_iter=1, eps_iter_scale=0.01, num_search_steps=14,
                released_quirks=False, seed=3)
  x_pgd = pgd(problem.predict, problem.x, problem.y, eps0, norm=norm, nb_iter=1,
              rel_step_size=0.01, loss='slm', seed=3, warm_start=(stored, known))
  assert not np.any(problem.is_correct(x_pgd))  # success at iteration 1
  _, eps_hat = anpgd(problem.predict, problem.x, problem.y, eps0, warm_start=(stored, known),
                     **kwargs)
  np.testing.assert_allclose(eps_hat, problem.margin, rtol=1e-3, atol=1e-4)
  _, cold = anpgd(problem.predict, problem.x, problem.y, eps0, **kwargs)
  assert np.mean(np.abs(cold.numpy() - problem.margin) > 0.01 * problem.margin) > 0.5


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_a_stored_perturbation_is_projected_into_the_ball_and_the_box(norm, rng):
  x = rng.uniform(0, 1, (6, 4, 5, 1)).astype(np.float32)
  y = np.zeros(6, np.int32)
  eps = np.array([0.05, 0.1, 0.2, 0.3, 0.5, 1.0], np.float32)
  stored = rng.uniform(-3, 3, x.shape).astype(np.float32)  # far outside ball and box
  known = np.array([True] * 5 + [False])
  predict = LinearProblem(norm).predict
  x_start = pgd(predict, x, y, eps, norm=norm, nb_iter=0, seed=1,
                warm_start=(stored, known)).numpy()
  geometry = norms.get_norm(norm)
  expected = geometry.project(tf.constant(x), tf.constant(stored), eps, 0.0, 1.0).numpy()
  np.testing.assert_allclose(x_start[:5] - x[:5], expected[:5], atol=1e-6)
  assert x_start.min() >= 0 and x_start.max() <= 1
  assert np.all(geometry.norm(tf.constant(x_start - x)).numpy() <= eps * (1 + 1e-5))
  random_start = pgd(predict, x, y, eps, norm=norm, nb_iter=0, seed=1).numpy()
  np.testing.assert_array_equal(x_start[5], random_start[5])  # unknown: the random start


# ------------------------------------------------------------------------------ augmentation
def test_a_stored_perturbation_follows_the_crop_and_flip():
  augment = data_lib.madry_cifar_augment
  rng = np.random.RandomState(0)
  x = tf.constant(rng.uniform(0, 1, (32, 32, 3)).astype(np.float32))
  delta = tf.constant(rng.uniform(-0.1, 0.1, (32, 32, 3)).astype(np.float32))
  uncovered = 0
  for s in range(6):
    seed = tf.constant([7, s], tf.int64)
    moved = augment.to_augmented(delta, seed)
    # The same crop and flip as the image: augment(x + d) == augment(x) + to_augmented(d).
    np.testing.assert_array_equal(augment(x + delta, seed), augment(x, seed) + moved)
    np.testing.assert_array_equal(augment.to_stored(moved, delta, seed), delta)  # round trip
    back = augment.to_stored(moved, tf.zeros_like(delta), seed).numpy()
    covered = back != 0
    np.testing.assert_array_equal(back[covered], delta.numpy()[covered])
    uncovered += np.sum(~covered)
  assert uncovered > 0  # some crops left pixels out: those keep their stored values (0 here)


def test_an_augmented_source_trains_with_the_memory(tmp_path):
  rng = np.random.RandomState(0)
  source = data_lib.from_arrays(rng.randint(0, 256, (80, 8, 8, 3), np.uint8),
                                rng.randint(0, 3, 80), num_validation=16,
                                augment=data_lib.PadCropFlip(pad=2))
  trainer = trainer_lib.Trainer(_config(objective='pgd_at', pgd_eps=0.1), str(tmp_path),
                                data=source, log=QUIET)
  iterator = iter(trainer.task.train_batches(0))
  for _ in range(2):
    trainer.task.train_step(iterator)
  assert trainer.task.perturbation_memory.known.numpy().sum() == 32
  with pytest.raises(ValueError, match='to_augmented'):
    flip = lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed)
    bad = data_lib.from_arrays(rng.randint(0, 256, (80, 8, 8, 3), np.uint8),
                               rng.randint(0, 3, 80), num_validation=16, augment=flip)
    trainer_lib.Trainer(_config(objective='pgd_at'), str(tmp_path / 'bad'), data=bad)


# ------------------------------------------------------------------------------ bad input
def test_a_memory_above_the_limit_is_refused_before_any_step(data8, tmp_path):
  config = _config(perturbation_memory_bits=32, perturbation_memory_limit_mb=1)
  source = data_lib.from_arrays(np.zeros((1200, 16, 16, 1), np.uint8), np.arange(1200) % 10,
                                num_validation=100)
  with pytest.raises(ValueError, match=r'--perturbation_memory would hold 1,200 perturbations of '
                                       r'1,024 bytes \(32 bits\): 1.2 MB, above the limit of 1 MB'):
    trainer_lib.Trainer(config, str(tmp_path / 'big'), data=source, log=QUIET)
  assert not (tmp_path / 'big' / 'ckpt').exists()
  messages = []
  trainer_lib.Trainer(_config(), str(tmp_path / 'ok'), data=data8, log=messages.append)
  assert any('perturbation memory: 128 bytes per example x 200 examples' in m for m in messages)


def test_the_memory_needs_an_objective_with_a_training_attack(data8, tmp_path):
  with pytest.raises(ValueError, match='--objective=standard has no training attack'):
    _config(objective='standard').validate()

  class NoAttack(objectives_lib.Objective):
    name = 'no_attack'

  with pytest.raises(ValueError, match="objective 'no_attack' has no training attack"):
    trainer_lib.Trainer(_config(), str(tmp_path), data=data8, objective=NoAttack(_config()))
  for flag in ('perturbation_memory_bits', 'perturbation_memory_limit_mb'):
    with pytest.raises(ValueError, match=f'--{flag} has no effect here'):
      tiny_config(**{flag: 32})


def test_the_memory_defaults_to_small_steps_unless_given():
  assert tiny_config(perturbation_memory=True, nb_iter=2).eps_iter_scale == 1.0
  assert tiny_config(perturbation_memory=True, nb_iter=2, eps_iter_scale=2.5).eps_iter_scale == 2.5
  assert tiny_config(nb_iter=2).eps_iter_scale == 2.5  # the released rule without the memory
