"""Throughput features keep the math: steps per loop, mixed precision, XLA around the whole step,
and an evaluator that traces once across calls."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import LinearProblem, tiny_config, warm_start
from mma_tf import evaluation, export as export_lib, precision
from mma_tf import trainer as trainer_lib
from mma_tf.attacks import anpgd, example_seeds, pgd

QUIET = lambda m: None


def _state(trainer):
  return [v.numpy() for v in trainer.task.model.weights] + [trainer.task.eps_memory.numpy()]


# ------------------------------------------------------------------------------ steps per loop
# Two replicas (CI: --runslow): the default tier proves one device's loop and that two replicas
# take one device's step (test_mirrored_step_equals_one_device).
@pytest.mark.parametrize('replicas', [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_loop_of_n_steps_equals_n_single_steps(replicas, data8, tmp_path, warm_weights,
                                                 op_determinism, two_cpu_strategy):  # noqa: F811
  strategy = two_cpu_strategy if replicas == 2 else None
  # 2 AN-PGD search steps (not 10) in the MMA runs of this file: each adds to every trace, and
  # what the tests compare does not depend on the search's resolution.
  config = tiny_config(model='small_cnn', batch_size=16, optimizer='sgd', learning_rate=0.05,
                       momentum=0.9, deterministic=True, num_search_steps=2)
  single = trainer_lib.Trainer(config, str(tmp_path / 'single'), strategy, data=data8, log=QUIET)
  looped = trainer_lib.Trainer(config, str(tmp_path / 'loop'), strategy, data=data8, log=QUIET)
  warm_start([single, looped], warm_weights)
  it_single, it_loop = iter(single.task.train_batches(0)), iter(looped.task.train_batches(0))
  outs = [single.task.train_step(it_single) for _ in range(5)]
  loop_out = looped.task.train_loop(it_loop, tf.constant(5, tf.int64))
  for a, b in zip(_state(single), _state(looped)):
    np.testing.assert_array_equal(a, b)
  assert np.count_nonzero(single.task.eps_memory.numpy()) > 20  # MMA wrote the memory
  for k in ('total_loss', 'slm_correct', 'eps_hat'):
    np.testing.assert_allclose(float(loop_out[k]), sum(float(o[k]) for o in outs), rtol=1e-6)
  assert int(loop_out['first_non_finite_step']) == -1 and int(looped.task.step.numpy()) == 5


@pytest.mark.slow  # the default tier proves resume (test_resume_equals_uninterrupted) and loops
# (test_a_loop_of_n_steps_equals_n_single_steps[1]) (CI: --runslow)
def test_training_with_steps_per_loop_resumes_to_the_same_run(data8, tmp_path,
                                                             op_determinism):  # noqa: F811
  fields = dict(model='small_cnn', batch_size=16, train_steps=14, checkpoint_every=4,
                log_every=3, deterministic=True, num_search_steps=2)
  reference = trainer_lib.Trainer(tiny_config(**fields), str(tmp_path / 'ref'), data=data8,
                                  log=QUIET)
  reference.train()
  messages = []
  looped = dict(fields, steps_per_loop=5)
  trainer_lib.Trainer(tiny_config(**dict(looped, train_steps=9)), str(tmp_path / 'loop'),
                      data=data8, log=QUIET).train()
  resumed = trainer_lib.Trainer(tiny_config(**looped), str(tmp_path / 'loop'), data=data8,
                                log=messages.append)
  summary = resumed.train()
  assert 'Resumed from step 9' in messages[0] and summary['step'] == 14
  # Loops end at every log (3), checkpoint (4) and epoch (10) boundary: 5 loops after step 9.
  assert resumed.task.train_loop.experimental_get_tracing_count() == 1
  for a, b in zip(_state(reference), _state(resumed)):
    np.testing.assert_array_equal(a, b)


def test_a_non_finite_loss_inside_a_loop_names_the_step_and_the_loop(data8, tmp_path):
  trainer = trainer_lib.Trainer(tiny_config(model='small_cnn', batch_size=16, train_steps=20,
                                            checkpoint_every=4, log_every=4, steps_per_loop=4,
                                            num_search_steps=2),
                                str(tmp_path), data=data8, log=QUIET)
  objective = trainer.task.objective

  class Poisoned(type(objective)):
    def __call__(self, *args):
      out = super().__call__(*args)
      out.loss = tf.where(trainer.task.step >= 5, np.nan, out.loss)  # the 6th step goes bad
      return out

  trainer.task.objective = Poisoned(objective.config)
  with pytest.raises(trainer_lib.NonFiniteLossError,
                     match=r'at step 6 \(in the loop of steps 5-8\).*ckpt-4'):
    trainer.train()


# ------------------------------------------------------------------------------ mixed precision
@pytest.mark.parametrize('policy', ['mixed_float16', 'mixed_bfloat16'])
def test_mixed_precision_attacks_find_the_float32_margins_of_linear_models(policy):
  p = LinearProblem('Linf', 10, batch=16)
  models = {}
  for name in ('float32', policy):
    with precision.dtype_policy(name):
      models[name] = keras.Sequential([keras.Input(p.x.shape[1:]), keras.layers.Flatten(),
                                       keras.layers.Dense(10)])
    models[name].layers[-1].set_weights([p.w, p.b])
  assert models[policy].layers[-1].compute_dtype == policy.split('_')[1]
  assert keras.config.dtype_policy().name == 'float32'  # the policy was restored
  predict = {name: precision.float32_logits(m, False) for name, m in models.items()}
  if policy == 'mixed_float16':
    predict[policy] = precision.loss_scaled(predict[policy], 2.0 ** 10)
  maxeps, steps = 0.5, 12
  resolution = maxeps / 2 ** steps
  found = {}
  for name, f in predict.items():
    _, eps = anpgd(f, p.x, p.y, np.full(16, 0.05, np.float32), maxeps=maxeps, nb_iter=30,
                   num_search_steps=steps, seed=example_seeds(0, np.arange(16)),
                   released_quirks=False)
    found[name] = eps.numpy()
  np.testing.assert_allclose(found['float32'], p.margin, atol=2 * resolution, rtol=0.01)
  # 16-bit logits move the decision boundary by about their rounding error.
  rounding = 1e-3 if policy == 'mixed_float16' else 8e-3
  np.testing.assert_allclose(found[policy], found['float32'], atol=2 * resolution,
                             rtol=2 * rounding)
  for scale in (0.98, 1.02):  # PGD in 16 bits fails just inside, succeeds just outside
    x_adv = pgd(predict[policy], p.x, p.y, p.margin * scale, nb_iter=50, loss='cw',
                seed=example_seeds(1, np.arange(16)))
    flipped = ~p.is_correct(x_adv)
    assert flipped.all() if scale > 1 else flipped.mean() <= 0.1


def test_float16_input_gradients_underflow_without_loss_scaling():
  with precision.dtype_policy('mixed_float16'):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
  model.layers[-1].set_weights([np.full((4, 3), 1e-4, np.float32) * [1, 2, 3],
                                np.zeros(3, np.float32)])
  x = tf.constant(np.full((2, 4), 0.5, np.float32))
  y = tf.constant([0, 2])  # d(CE)/dx = w (p - onehot(y)): (1 + 2 + 3) / 3 - c_y, non-zero

  def gradient(predict):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, predict(x))) * 1e-4
    return tape.gradient(loss, x).numpy()

  plain = precision.float32_logits(model, False)
  assert np.all(gradient(plain) == 0)  # underflowed in float16
  scaled = gradient(precision.loss_scaled(plain, 2.0 ** 12))
  assert np.all(scaled != 0) and np.all(np.isfinite(scaled))


@pytest.mark.parametrize('policy', ['mixed_float16', 'mixed_bfloat16'])
def test_a_mixed_precision_mma_run_is_finite_resumes_its_loss_scale_and_exports_float32(
    policy, data8, tmp_path, monkeypatch):
  monkeypatch.setattr(precision, 'has_native_bfloat16', lambda: False)
  messages = []
  config = tiny_config(model='small_cnn', batch_size=16, train_steps=2, checkpoint_every=2,
                       mixed_precision=policy, num_search_steps=2)
  trainer = trainer_lib.Trainer(config, str(tmp_path), data=data8, log=messages.append)
  assert trainer.task.model.layers[0].compute_dtype == policy.split('_')[1]
  assert (policy == 'mixed_bfloat16') == any('without avx512_bf16' in m for m in messages)
  float16 = policy == 'mixed_float16'
  assert isinstance(trainer.task.optimizer, keras.optimizers.LossScaleOptimizer) == float16
  if float16:
    trainer.task.optimizer.dynamic_scale.assign(512.0)
  summary = trainer.train()
  assert np.isfinite(summary['validation']['avg_margin'])
  assert all(np.all(np.isfinite(w)) for w in _state(trainer))
  resumed = trainer_lib.Trainer(config, str(tmp_path), data=data8, log=QUIET)
  assert resumed.restore() == 2
  if float16:
    assert float(resumed.task.optimizer.dynamic_scale.numpy()) == float(
        trainer.task.optimizer.dynamic_scale.numpy()) <= 512
  predict, spec = export_lib.load_classifier(summary['export'])
  x, _, _ = data8.eval_split('test', limit=4)
  assert spec.dtype == tf.float32 and predict(tf.constant(x)).dtype == tf.float32
  np.testing.assert_allclose(predict(tf.constant(x)), trainer.task.model(x), atol=0.05)


# ------------------------------------------------------------------------------ XLA
@pytest.mark.slow  # XLA compilation: off by default, slow to compile on CPUs (CI: --runslow)
@pytest.mark.parametrize('replicas', [1, 2])
def test_the_xla_step_equals_the_default_step(replicas, data8, tmp_path, warm_weights,
                                              two_cpu_strategy):
  strategy = two_cpu_strategy if replicas == 2 else None
  trainers = [trainer_lib.Trainer(tiny_config(model='small_cnn', batch_size=16, optimizer='sgd',
                                              learning_rate=0.05, momentum=0.9, jit_compile=jit,
                                              num_search_steps=2),
                                  str(tmp_path / str(jit)), strategy, data=data8, log=QUIET)
              for jit in (False, True)]
  warm_start(trainers, warm_weights)
  for t in trainers:
    t.task.train_loop(iter(t.task.train_batches(0)), tf.constant(2, tf.int64))
  for a, b in zip(*map(_state, trainers)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert np.count_nonzero(trainers[1].task.eps_memory.numpy()) > 10  # attacked examples


# ------------------------------------------------------------------------------ evaluator
@pytest.mark.slow  # counts traces, a speed property, over five whole evaluations (CI: --runslow)
def test_evaluate_traces_once_across_calls_with_the_same_model():
  p = LinearProblem('Linf', 10, batch=16)
  model = keras.Sequential([keras.Input(p.x.shape[1:]), keras.layers.Flatten(),
                            keras.layers.Dense(10)])
  model.layers[-1].set_weights([p.w, p.b])
  predict = lambda x: model(x, training=False)
  config = evaluation.EvalConfig(norm='Linf', eps=(0.05,), protocol='all', nb_iter=5,
                                 nb_restart=2, apgd_nb_iter=5, fab_nb_iter=5, n_target_classes=2,
                                 square_queries=10, margin_estimates=('anpgd',), batch_size=16)
  first, _ = evaluation.evaluate(predict, p.x, p.y, config)
  runner = evaluation.runner_for(predict, config)
  traces = {k: f.experimental_get_tracing_count() for k, f in runner._compiled.items()}
  second, _ = evaluation.evaluate(predict, p.x, p.y, config)
  assert evaluation.runner_for(predict, config) is runner and len(traces) >= 6
  assert {k: f.experimental_get_tracing_count() for k, f in runner._compiled.items()} == traces
  assert first['robust_acc'] == second['robust_acc']
  # Another radius and protocol on the same model: the same runner, nothing traced again.
  other = evaluation.EvalConfig(**dict(vars(config), eps=(0.1,), protocol='autoattack',
                                       margin_estimates=()))
  evaluation.evaluate(predict, p.x, p.y, other)
  assert evaluation.runner_for(predict, other) is runner
  assert {k: f.experimental_get_tracing_count() for k, f in runner._compiled.items()} == traces
  smaller = evaluation.EvalConfig(**dict(vars(config), batch_size=8))
  assert evaluation.runner_for(predict, smaller) is not runner  # other shapes: another runner


def test_float16_gradients_non_finite_on_one_replica_are_non_finite_on_all(two_cpu_strategy):
  from mma_tf import step as step_lib

  @tf.function
  def step():
    def on_replica():
      ctx = tf.distribute.get_replica_context()
      bad = tf.where(ctx.replica_id_in_sync_group == 1, np.inf, 0.0)  # replica 1 only
      return step_lib._non_finite_everywhere([tf.ones([3]) + bad, tf.zeros([2])])
    return two_cpu_strategy.run(on_replica)

  results = step()
  for grads in zip(*[two_cpu_strategy.experimental_local_results(g) for g in results]):
    assert all(np.all(~np.isfinite(g.numpy())) for g in grads)  # both replicas, both tensors
  clean = two_cpu_strategy.run(
      tf.function(lambda: step_lib._non_finite_everywhere([tf.ones([3])])))
  assert all(np.all(g.numpy() == 1) for g in two_cpu_strategy.experimental_local_results(clean[0]))
