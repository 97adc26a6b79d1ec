"""TensorBoard scalars (model_dir/train, model_dir/validation) and the progress lines."""
import time

import tensorflow as tf


class Summaries:
  """Writes a run's training windows and validations, from step `start` on."""

  def __init__(self, task, checkpoints, train_steps, start, log):
    self.task, self.train_steps, self.start, self.log = task, train_steps, start, log
    self.t0 = time.time()
    # The chief's in model_dir; a non-chief's in its scratch directory (checkpoints.write_dir).
    self.writers = {name: tf.summary.create_file_writer(checkpoints.write_dir(name))
                    for name in ('train', 'validation')}

  def train(self, step, window, eps):
    """A window of training steps: `window` holds the summed statistics and 'examples'; `eps`
    the last batch's eps (None without an eps memory)."""
    n = window.pop('examples')
    window.pop('total_loss', None)
    objective = self.task.objective
    metrics = objective.summarize(window, n)
    # The optimizer's own rate (on the trainer's step: the one the next step uses).
    lr = float(tf.convert_to_tensor(self.task.optimizer.learning_rate))
    with self.writers['train'].as_default(step=step):
      for k, v in metrics.items():
        tf.summary.scalar(k, v)
      tf.summary.scalar('learning_rate', lr)
      if objective.uses_eps_memory:
        tf.summary.histogram('eps_memory', self.task.eps_memory)
        tf.summary.histogram('eps_batch', eps)
    rate = (step - self.start) / max(time.time() - self.t0, 1e-9)
    eta = (self.train_steps - step) / max(rate, 1e-9)
    text = ' '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))
    self.log(f'step {step}/{self.train_steps} {text} lr {lr:.2g} '
             f'{rate:.2f} steps/s eta {eta / 60:.1f} min')

  def validation(self, step, epoch, val, note=''):
    with self.writers['validation'].as_default(step=step):
      for k, v in val.items():
        tf.summary.scalar(k, v)
    self.log(f'epoch {epoch} step {step}: validation clean_acc {val["clean_acc"]:.4f} '
             f'pgd_acc@{self.task.config.test_eps:g} {val["pgd_acc"]:.4f} avg_margin '
             f'{val["avg_margin"]:.4f}{note}')
