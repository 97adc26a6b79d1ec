"""Adversarial attacks, pure functions over (predict, x, y, eps): PGD and AN-PGD (training and
the MMA paper's evaluation), and AutoAttack's APGD, FAB and Square; `registry` names them for
the evaluator.

Each algorithm lives in its own module (`pgd_attack`, `anpgd_attack`, `apgd_attack`, `fab_attack`,
`square_attack`; what they share in `common`); the package exports the functions, so
`mma_tf.attacks.pgd` is the function and `mma_tf.attacks.pgd_attack` its module.
"""
from mma_tf.attacks.common import check_attack_inputs, example_seeds, input_gradient
from mma_tf.attacks.pgd_attack import pgd
from mma_tf.attacks.anpgd_attack import anpgd, anpgd_test, bisection_search, illinois_search
from mma_tf.attacks.apgd_attack import apgd, apgd_checkpoints, apgd_targeted
from mma_tf.attacks.fab_attack import fab, fab_targeted
from mma_tf.attacks.square_attack import square
from mma_tf.attacks.registry import ATTACKS, Attack, get_attack, register
# Registers the built-in attacks, so `get_attack` finds them whichever module is imported first.
from mma_tf.attacks import protocol_attacks  # noqa: F401  pylint: disable=unused-import

__all__ = ['ATTACKS', 'Attack', 'anpgd', 'anpgd_test', 'apgd', 'apgd_checkpoints', 'apgd_targeted',
           'bisection_search', 'check_attack_inputs', 'example_seeds', 'fab', 'fab_targeted',
           'get_attack', 'illinois_search', 'input_gradient', 'pgd', 'register', 'square']
