"""Adversarial attacks, pure functions over (predict, x, y, eps): PGD and AN-PGD (training and
the MMA paper's evaluation), and AutoAttack's APGD, FAB and Square; `registry` names them for
the evaluator."""
from mma_tf.attacks.anpgd import anpgd, anpgd_test, bisection_search
from mma_tf.attacks.pgd import check_attack_inputs, example_seeds, input_gradient, pgd
from mma_tf.attacks.apgd import apgd, apgd_checkpoints, apgd_targeted
from mma_tf.attacks.fab import fab, fab_targeted
from mma_tf.attacks.square import square
from mma_tf.attacks.registry import ATTACKS, Attack, get_attack, register
