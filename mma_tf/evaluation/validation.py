"""Training-time validation, the MMA code's checkpoint-selection protocol (docs/paper_notes.md
2.5): clean accuracy, PGD accuracy at test_eps and the AN-PGD (`ANPGDForTest`) margin."""
import tensorflow as tf

from mma_tf.attacks import anpgd_test, pgd
from mma_tf.evaluation.common import is_correct, stream_example_seeds


def validation_sums(predict, x, y, index, weight, config):
  """Weighted sums over one padded batch (weight 0 marks padding) of a `TrainConfig`'s
  validation metrics: {'clean_correct', 'pgd_correct', 'margin', 'count'}."""
  seeds = stream_example_seeds(config.seed, 'validation', index)
  correct = lambda images: tf.cast(is_correct(predict(images), y), tf.float32)
  x_pgd = pgd(predict, x, y, config.test_eps, norm=config.norm,
              nb_iter=config.validation_nb_iter,
              step_size=config.test_eps_iter, loss='ce', seed=seeds)
  _, eps_hat = anpgd_test(predict, x, y, test_eps=config.test_eps, maxeps=config.maxeps,
                          norm=config.norm, nb_iter=config.validation_nb_iter,
                          test_eps_iter=config.test_eps_iter,
                          num_search_steps=config.validation_search_steps, seed=seeds,
                          released_quirks=config.released_quirks)
  return {'clean_correct': tf.reduce_sum(weight * correct(x)),
          'pgd_correct': tf.reduce_sum(weight * correct(x_pgd)),
          'margin': tf.reduce_sum(weight * eps_hat), 'count': tf.reduce_sum(weight)}


def validation_metrics(totals):
  """{'clean_acc', 'pgd_acc', 'avg_margin'} from `validation_sums` summed over a split."""
  n = max(totals.get('count', 0.0), 1.0)
  return {'clean_acc': totals['clean_correct'] / n, 'pgd_acc': totals['pgd_correct'] / n,
          'avg_margin': totals['margin'] / n}
