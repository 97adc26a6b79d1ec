"""The evaluation protocols by name and the attacks each runs (names of the attack registry).

No TensorFlow here: `mma-evaluate` checks --protocol before TF starts, as it checks its other
flags. What each protocol is: `mma_tf.evaluation.protocols` (which also builds the attacks).
"""
AUTOATTACK = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
RAND = ('apgd-ce', 'apgd-dlr')
PAPER = ('pgd',)
FAST = ('apgd-ce', 'apgd-t-malt', 'fab-t-malt', 'square')  # not standard AutoAttack: fast.py
PROTOCOL_ATTACKS = {'autoattack': AUTOATTACK, 'rand': RAND, 'paper': PAPER, 'fast': FAST}
PROTOCOLS = ('autoattack', 'paper', 'fast', 'rand', 'all')
ALL = ('autoattack', 'paper', 'fast')  # what 'all' runs: 'rand' is for random models only


def parse(protocol):
  """The protocols to run, in order: 'all' is autoattack, paper and fast; a comma-separated list
  names some. ValueError for an unknown name or one named twice."""
  if not isinstance(protocol, str):
    raise ValueError(f"protocol must be a string, e.g. 'autoattack' or 'autoattack,fast'; got "
                     f'{protocol!r}.')
  if protocol == 'all':
    return list(ALL)
  names = [p.strip() for p in protocol.split(',')]
  for p in names:
    if p not in PROTOCOL_ATTACKS:
      raise ValueError(f'Unknown protocol {p!r}; choose from {", ".join(PROTOCOLS)} or a '
                       "comma-separated list of them (e.g. 'autoattack,fast').")
  if len(set(names)) < len(names):
    raise ValueError(f'Protocol {protocol!r} names one twice.')
  return names
