"""Adversarial attacks: PGD and AN-PGD, pure functions over (predict, x, y, eps)."""
from mma_tf.attacks.anpgd import anpgd, anpgd_test, bisection_search
from mma_tf.attacks.pgd import check_attack_inputs, example_seeds, input_gradient, pgd
