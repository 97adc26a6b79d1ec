"""Our TF AutoAttack against the reference PyTorch AutoAttack (fra31/auto-attack): speed and parity.

Run OUTSIDE CI, in a virtualenv of its own that has torch and mma_tf (never the project's; see
bench/README_autoattack_torch.md, which lists the flags):
  python bench/compare_autoattack_torch.py --saved_model=DIR --autoattack_path=DIR \
      [--num_examples=200] [--eps=0.3] [--norm=Linf] [--batch_size=100] [--threads=N]

On the first N test digits of the embedded mnist_5k split it
1. copies the SavedModel's LeNet5Madry weights into the same network written in PyTorch and aborts
   unless the two give the same logits (max abs diff <= 1e-3);
2. runs the reference AutoAttack (version='standard', seed 0) on the PyTorch copy;
3. runs ours (`mma_tf.evaluation.evaluate`, protocol 'autoattack') on the loaded SavedModel;
4. prints robust accuracy after each attack and seconds per attack of both, side by side.
Each half runs in a child process of its own (--part=torch / --part=tf write JSON to --out_dir), so
neither runtime's thread pool lives in the process being timed by the other; --part=table prints
the table again from those files. Neither torch nor the reference is imported by mma_tf itself.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

flags.DEFINE_string('saved_model', None, 'mma_tf export of LeNet5Madry (28x28x1 -> 10 logits).')
flags.DEFINE_string('autoattack_path', None,
                    'A checkout of fra31/auto-attack: the directory holding its package '
                    '`autoattack`. Needed by --part=all and --part=torch.')
flags.DEFINE_integer('num_examples', 200, 'First N digits of the mnist_5k test split.')
flags.DEFINE_float('eps', 0.3, 'Radius (inputs in [0, 1]).')
flags.DEFINE_enum('norm', 'Linf', ['Linf', 'L2'], 'Threat model.')
flags.DEFINE_integer('batch_size', 100, 'Batch size of both implementations.')
flags.DEFINE_integer('threads', 0, 'Intra-op threads of both runtimes (0: one per CPU core).')
flags.DEFINE_enum('part', 'all', ['all', 'torch', 'tf', 'table'],
                  'all: both halves (child processes) then the table; torch / tf: one half, '
                  'written to --out_dir; table: print the table from --out_dir.')
flags.DEFINE_string('out_dir', None, 'Where the halves write torch.json / tf.json '
                    '(default: a new temporary directory).')
flags.DEFINE_bool('tf_warm', False, 'Also time our attacks a second time with compiled functions '
                  'reused, to separate tf.function tracing from running (costs two more runs).')
FLAGS = flags.FLAGS

ATTACKS = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
MAX_LOGIT_DIFF = 1e-3


def _threads():
  return FLAGS.threads or os.cpu_count()


def _cpu_model():
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    return re.search(r'Model name:\s*(.*)', out).group(1).strip()
  except (OSError, subprocess.CalledProcessError, AttributeError):
    return 'unknown (lscpu failed)'


def _points():
  """The first N test digits in [0, 1], NHWC float32, and their labels."""
  from mma_tf import data
  images, labels, _ = data.load('mnist_5k').eval_split('test')
  n = FLAGS.num_examples
  if not 0 < n <= len(labels):
    raise app.UsageError(f'--num_examples must lie in [1, {len(labels)}]; got {n}.')
  return images[:n].astype(np.float32), labels[:n].astype(np.int64)  # already in [0, 1]


def _tf_logits(predict, x):
  return np.concatenate([np.asarray(predict(x[i:i + FLAGS.batch_size]))
                         for i in range(0, len(x), FLAGS.batch_size)])


# ----------------------------------------------------------------------------- the PyTorch half


def _torch_lenet(image_shape, num_classes):
  """LeNet5Madry in PyTorch, layer for layer as mma_tf.models.lenet5_madry ('same' 5x5 convs)."""
  import torch.nn as nn
  h, w, c = image_shape
  return nn.Sequential(
      nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(),
      nn.Linear(64 * (h // 4) * (w // 4), 1024), nn.ReLU(),
      nn.Linear(1024, num_classes))


def _copy_weights(loaded, model, image_shape, num_classes):
  """Copies the SavedModel's variables into `model`; returns a description of the mapping.

  Variables are matched by shape in the order the network uses them (every shape of LeNet5Madry is
  distinct, so a match is unambiguous). Keras stores conv kernels HWIO and flattens NHWC feature
  maps; PyTorch wants OIHW kernels and flattens NCHW, so the first dense kernel's rows are
  reordered from (h, w, c) to (c, h, w) as well as transposed.
  """
  import torch
  h, w, c = image_shape
  fh, fw = h // 4, w // 4
  wanted = [('conv1.kernel', (5, 5, c, 32)), ('conv1.bias', (32,)),
            ('conv2.kernel', (5, 5, 32, 64)), ('conv2.bias', (64,)),
            ('fc1.kernel', (fh * fw * 64, 1024)), ('fc1.bias', (1024,)),
            ('fc2.kernel', (1024, num_classes)), ('fc2.bias', (num_classes,))]
  variables = list(loaded.trainable_variables) or list(loaded.variables)
  by_shape = {}
  for v in variables:
    by_shape.setdefault(tuple(v.shape.as_list()), []).append(v)
  found, mapping, positions = [], [], []
  for name, shape in wanted:
    candidates = by_shape.get(shape, [])
    if len(candidates) != 1:
      raise SystemExit(f'The SavedModel has {len(candidates)} variables of shape {shape} (for '
                       f'{name}); expected exactly one. Its variables: '
                       f'{[(v.name, tuple(v.shape)) for v in variables]}. Is it a LeNet5Madry '
                       'export?')
    found.append(candidates[0].numpy())
    mapping.append(f'{candidates[0].name} {shape} -> {name}')
    positions.append(next(i for i, v in enumerate(variables) if v is candidates[0]))
  if len(variables) != len(wanted):
    raise SystemExit(f'The SavedModel has {len(variables)} trainable variables; LeNet5Madry has '
                     f'{len(wanted)}.')
  k1, b1, k2, b2, d1, e1, d2, e2 = found
  d1 = d1.reshape(fh, fw, 64, 1024).transpose(2, 0, 1, 3).reshape(fh * fw * 64, 1024)
  tensors = [k1.transpose(3, 2, 0, 1), b1, k2.transpose(3, 2, 0, 1), b2, d1.T, e1, d2.T, e2]
  params = [model[0].weight, model[0].bias, model[3].weight, model[3].bias,
            model[7].weight, model[7].bias, model[9].weight, model[9].bias]
  with torch.no_grad():
    for p, t in zip(params, tensors):
      if tuple(p.shape) != t.shape:
        raise SystemExit(f'Internal shape clash: torch {tuple(p.shape)} vs converted {t.shape}.')
      p.copy_(torch.from_numpy(np.ascontiguousarray(t, np.float32)))
  return mapping, positions == sorted(positions)


class _RecordingLogger:
  """Stands in for the reference's Logger: prints, and keeps each line with its time."""

  def __init__(self):
    self.lines = []

  def log(self, text):
    print(f'[reference] {text}', flush=True)
    self.lines.append((time.perf_counter(), str(text)))


def run_torch_half():
  # libgomp's default busy-wait makes torch's 2 OpenMP threads several times slower on a machine
  # shared with other processes (LeNet fwd+bwd, batch 20: 1.2 s spinning vs 0.28 s passive);
  # TF's Eigen pool sleeps instead. Read once when libgomp loads, hence before `import torch`.
  os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
  import torch
  from mma_tf import export

  threads = _threads()
  torch.set_num_threads(threads)
  x, y = _points()
  predict, spec = export.load_classifier(FLAGS.saved_model)
  image_shape = tuple(spec.shape.as_list()[1:])
  if image_shape != x.shape[1:]:
    raise SystemExit(f'The SavedModel takes {image_shape}; the digits are {x.shape[1:]}.')
  tf_logits = _tf_logits(predict, x)
  num_classes = tf_logits.shape[1]

  model = _torch_lenet(image_shape, num_classes).eval()
  mapping, in_order = _copy_weights(predict.loaded, model, image_shape, num_classes)
  print('weights copied (SavedModel variable -> PyTorch parameter):')
  for m in mapping:
    print(f'  {m}')
  if not in_order:
    print('  note: the SavedModel lists these variables in another order; matched by shape.')
  x_t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  y_t = torch.from_numpy(y)
  with torch.no_grad():
    torch_logits = model(x_t).numpy()
  diff = float(np.max(np.abs(torch_logits - tf_logits)))
  argmax_same = int(np.sum(torch_logits.argmax(1) == tf_logits.argmax(1)))
  print(f'logits PyTorch vs TF SavedModel on {len(x)} points: max abs diff {diff:.3g} '
        f'(logit scale {np.max(np.abs(tf_logits)):.3g}); same argmax on {argmax_same}/{len(x)}')
  if diff > MAX_LOGIT_DIFF:
    raise SystemExit(f'Logits differ by {diff:.3g} > {MAX_LOGIT_DIFF}: the weight conversion is '
                     'wrong or the SavedModel is not LeNet5Madry. Aborting.')
  del predict, tf_logits

  sys.path.insert(0, os.path.abspath(FLAGS.autoattack_path))
  try:
    from autoattack import AutoAttack
  except ImportError as e:
    raise SystemExit(f'Cannot import the reference `autoattack` from {FLAGS.autoattack_path} '
                     f'({e}). Pass --autoattack_path=DIR holding the package directory.') from e
  import autoattack
  aa = AutoAttack(model, norm=FLAGS.norm, eps=FLAGS.eps, seed=0, version='standard',
                  device='cpu', verbose=True)
  logger = _RecordingLogger()
  aa.logger = logger

  # Per-example bookkeeping: the driver hands each attack chunks of still-robust clean points;
  # find them by content to learn which dataset points each attack broke.
  where = {}
  for i in range(len(x)):
    where.setdefault((x_t[i].numpy().tobytes(), int(y[i])), []).append(i)
  broken_by = np.full(len(x), -1, np.int32)
  attack_seconds = {a: 0.0 for a in ATTACKS}

  def timed(name, perturb):
    def wrapper(xb, yb, *args, **kwargs):
      t = time.perf_counter()
      adv = perturb(xb, yb, *args, **kwargs)
      seconds = time.perf_counter() - t
      attack_seconds[name] += seconds
      with torch.no_grad():
        hit = (model(adv).argmax(1) != yb).numpy()
      print(f'[timing] {name}: {len(xb)} points, {int(hit.sum())} broken, {seconds:.1f} s',
            flush=True)
      a_i = ATTACKS.index(name)
      for row, ok in zip(range(len(xb)), hit):
        if ok:
          for i in where[(xb[row].numpy().tobytes(), int(yb[row]))]:
            if broken_by[i] < 0:
              broken_by[i] = a_i
      return adv
    return wrapper

  # In the standard version each object serves exactly one attack.
  aa.apgd.perturb = timed('apgd-ce', aa.apgd.perturb)
  aa.apgd_targeted.perturb = timed('apgd-t', aa.apgd_targeted.perturb)
  aa.fab.perturb = timed('fab-t', aa.fab.perturb)
  aa.square.perturb = timed('square', aa.square.perturb)
  if list(aa.attacks_to_run) != list(ATTACKS):
    raise SystemExit(f'The reference standard version runs {aa.attacks_to_run}; this script '
                     f'expects {list(ATTACKS)}.')

  load = os.getloadavg()
  t0 = time.perf_counter()
  x_adv = aa.run_standard_evaluation(x_t, y_t, bs=FLAGS.batch_size)
  total = time.perf_counter() - t0
  with torch.no_grad():
    final_robust = (model(x_adv).argmax(1) == y_t).numpy()
    clean = (model(x_t).argmax(1) == y_t).numpy()
  linf = float((x_adv - x_t).abs().reshape(len(x), -1).max(1)[0].max())

  after, cumulative = {}, {}
  for _, text in logger.lines:
    m = re.match(r'robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)', text)
    if m:
      after[m.group(1).lower()] = float(m.group(2)) / 100
      cumulative[m.group(1).lower()] = float(m.group(3))
  acc_after = {}
  for a_i, a in enumerate(ATTACKS):
    acc_after[a] = float(np.mean(clean & ((broken_by < 0) | (broken_by > a_i))))
    if a in after and abs(after[a] - acc_after[a]) > 1e-4:
      print(f'warning: the reference logs {after[a]:.4f} after {a}; the bookkeeping here has '
            f'{acc_after[a]:.4f}')
  if np.any(final_robust != (clean & (broken_by < 0))):
    print('warning: per-example bookkeeping disagrees with the reference output x_adv')
  return {
      'impl': 'reference PyTorch AutoAttack (fra31/auto-attack)',
      'autoattack_path': os.path.abspath(FLAGS.autoattack_path),
      'autoattack_file': os.path.abspath(autoattack.__file__),
      'torch_version': torch.__version__,
      'threads': {'torch.get_num_threads': torch.get_num_threads(),
                  'torch.get_num_interop_threads': torch.get_num_interop_threads(),
                  'OMP_WAIT_POLICY': os.environ.get('OMP_WAIT_POLICY')},
      'logit_max_abs_diff': diff, 'argmax_agree': argmax_same,
      'clean_acc': float(clean.mean()),
      'acc_after': acc_after,
      'seconds': {a: round(s, 2) for a, s in attack_seconds.items()},
      'reference_cumulative_seconds': cumulative,
      'total_seconds': round(total, 2),
      'robust_acc': float(final_robust.mean()),
      'max_linf_perturbation': linf,
      'broken_by': broken_by.tolist(), 'clean_correct': clean.astype(int).tolist(),
      'loadavg_before': load, 'loadavg_after': os.getloadavg(),
  }


# --------------------------------------------------------------------------------- the TF half


def run_tf_half():
  import mma_tf  # noqa: F401  before TF: it picks TF's CPU kernels (mma_tf/__init__.py)
  import tensorflow as tf
  threads = _threads()
  tf.config.threading.set_intra_op_parallelism_threads(threads)  # before any op runs
  from mma_tf import evaluation, export
  from mma_tf.evaluation.runner import Runner, run_attacks

  x, y = _points()
  y = y.astype(np.int32)
  predict, _ = export.load_classifier(FLAGS.saved_model)
  config = evaluation.EvalConfig(norm=FLAGS.norm, eps=(FLAGS.eps,), protocol='autoattack',
                                 margin_estimates=(), batch_size=FLAGS.batch_size)
  load = os.getloadavg()
  t0 = time.perf_counter()
  results, per_example = evaluation.evaluate(predict, x, y, config,
                                             progress=lambda t: print(f'[ours] {t}', flush=True))
  total = time.perf_counter() - t0
  aa = results['protocols']['autoattack']
  key = f'{FLAGS.eps:g}'
  out = {
      'impl': 'mma_tf AutoAttack (TF)',
      'tf_version': tf.__version__,
      'threads': {'tf intra_op (set)': tf.config.threading.get_intra_op_parallelism_threads(),
                  'tf inter_op (0 = TF default)':
                      tf.config.threading.get_inter_op_parallelism_threads(),
                  'TF_ENABLE_ONEDNN_OPTS': os.environ.get('TF_ENABLE_ONEDNN_OPTS')},
      'clean_acc': results['clean_acc'],
      'acc_after': aa['acc_after'][key],
      'seconds': aa['seconds'],
      'total_seconds': round(total, 2),
      'robust_acc': aa['robust_acc'][key],
      'broken_by': per_example['autoattack_broken_by'][0].tolist(),
      'clean_correct': per_example['clean_correct'].astype(int).tolist(),
      'loadavg_before': load, 'loadavg_after': os.getloadavg(),
  }
  if FLAGS.tf_warm:
    # A fresh runner and fixed attack objects: the first pass traces, the second reuses traces.
    runner = Runner(config.batch_size, None, config.jit_compile)
    attacks = config.protocol_attacks()['autoattack']
    clean = per_example['clean_correct'].astype(bool)
    index = np.arange(len(y), dtype=np.int32)
    runs = [run_attacks(runner, predict, attacks, x, y, index, FLAGS.eps, clean, config.seed,
                        results['num_classes']) for _ in range(2)]
    out['seconds_first_pass'] = dict(zip(ATTACKS, [round(s, 2) for s in runs[0]['seconds']]))
    out['seconds_warm'] = dict(zip(ATTACKS, [round(s, 2) for s in runs[1]['seconds']]))
  return out


# ------------------------------------------------------------------------------------ the table


def print_table(ref, ours):
  print()
  print(f'AutoAttack standard, {FLAGS.norm} eps={FLAGS.eps:g}, first {len(ref["broken_by"])} '
        f'mnist_5k test digits, batch {FLAGS.batch_size}')
  print(f'CPU: {_cpu_model()}, {os.cpu_count()} cores; threads: reference {ref["threads"]}, '
        f'ours {ours["threads"]}')
  print(f'load average (1, 5, 15 min) before/after: reference {ref["loadavg_before"]} / '
        f'{ref["loadavg_after"]}, ours {ours["loadavg_before"]} / {ours["loadavg_after"]}')
  print(f'logits PyTorch copy vs SavedModel: max abs diff {ref["logit_max_abs_diff"]:.3g}')
  warm = 'seconds_warm' in ours
  head = (f'{"attack":<8} | {"rob.acc ref":>11} | {"rob.acc ours":>12} | {"s ref":>8} | '
          f'{"s ours":>8} | {"ours/ref":>8}' + (f' | {"s ours warm":>11}' if warm else ''))
  print(head)
  print('-' * len(head))
  print(f'{"clean":<8} | {ref["clean_acc"]:>11.4f} | {ours["clean_acc"]:>12.4f} | {"":>8} | '
        f'{"":>8} | {"":>8}' + (f' | {"":>11}' if warm else ''))
  for a in ATTACKS:
    s_ref, s_ours = ref['seconds'][a], ours['seconds'][a]
    ratio = f'{s_ours / s_ref:.2f}' if s_ref > 0 else 'n/a'
    print(f'{a:<8} | {ref["acc_after"][a]:>11.4f} | {ours["acc_after"][a]:>12.4f} | '
          f'{s_ref:>8.1f} | {s_ours:>8.1f} | {ratio:>8}'
          + (f' | {ours["seconds_warm"][a]:>11.1f}' if warm else ''))
  s_ref, s_ours = sum(ref['seconds'].values()), sum(ours['seconds'].values())
  print(f'{"attacks":<8} | {"":>11} | {"":>12} | {s_ref:>8.1f} | {s_ours:>8.1f} | '
        f'{s_ours / max(s_ref, 1e-9):>8.2f}'
        + (f' | {sum(ours["seconds_warm"].values()):>11.1f}' if warm else ''))
  print(f'{"whole":<8} | {ref["robust_acc"]:>11.4f} | {ours["robust_acc"]:>12.4f} | '
        f'{ref["total_seconds"]:>8.1f} | {ours["total_seconds"]:>8.1f} | '
        f'{ours["total_seconds"] / max(ref["total_seconds"], 1e-9):>8.2f}'
        + (f' | {"":>11}' if warm else ''))
  print('s ref: time inside each reference attack (perturb calls); s ours: '
        "results['protocols']['autoattack']['seconds'] (includes tf.function tracing); whole: "
        'run_standard_evaluation vs evaluate() (ours adds noise and model sanity checks).')
  if warm:
    print(f'ours, first pass with a fresh runner: {ours["seconds_first_pass"]}')

  rb, ob = np.array(ref['broken_by']), np.array(ours['broken_by'])
  rc, oc = np.array(ref['clean_correct'], bool), np.array(ours['clean_correct'], bool)
  if np.any(rc != oc):
    print(f'clean correctness differs on points {np.nonzero(rc != oc)[0].tolist()}')
  for a_i, a in enumerate(ATTACKS):
    r_rob = rc & ((rb < 0) | (rb > a_i))
    o_rob = oc & ((ob < 0) | (ob > a_i))
    only_r, only_o = np.nonzero(r_rob & ~o_rob)[0], np.nonzero(o_rob & ~r_rob)[0]
    if only_r.size or only_o.size:
      print(f'after {a}: robust only for the reference {only_r.tolist()}, only for ours '
            f'{only_o.tolist()}')
  final_r, final_o = rc & (rb < 0), oc & (ob < 0)
  print(f'final robust sets agree on {int(np.sum(final_r == final_o))}/{len(rb)} points')


def _child(part, out_dir):
  args = [sys.executable, os.path.abspath(__file__), f'--part={part}', f'--out_dir={out_dir}',
          f'--saved_model={FLAGS.saved_model}', f'--autoattack_path={FLAGS.autoattack_path or ""}',
          f'--num_examples={FLAGS.num_examples}', f'--eps={FLAGS.eps!r}', f'--norm={FLAGS.norm}',
          f'--batch_size={FLAGS.batch_size}', f'--threads={FLAGS.threads}',
          f'--tf_warm={FLAGS.tf_warm}']
  print(f'== {part} half: {" ".join(args[1:])}', flush=True)
  code = subprocess.call(args)
  if code:
    raise SystemExit(f'The {part} half failed (exit code {code}).')


def main(argv):
  del argv
  if FLAGS.part != 'table' and not FLAGS.saved_model:
    raise app.UsageError('Give --saved_model=DIR (an mma_tf LeNet5Madry export).')
  if FLAGS.part in ('all', 'torch') and not FLAGS.autoattack_path:
    raise app.UsageError('Give --autoattack_path=DIR, a checkout of fra31/auto-attack (the '
                         'directory holding its package `autoattack`).')
  out_dir = FLAGS.out_dir or tempfile.mkdtemp(prefix='compare_autoattack_')
  os.makedirs(out_dir, exist_ok=True)
  if FLAGS.part == 'all':
    _child('torch', out_dir)
    _child('tf', out_dir)
  elif FLAGS.part in ('torch', 'tf'):
    result = run_torch_half() if FLAGS.part == 'torch' else run_tf_half()
    result['flags'] = {k: getattr(FLAGS, k) for k in ('saved_model', 'num_examples', 'eps', 'norm',
                                                      'batch_size')}
    path = os.path.join(out_dir, f'{FLAGS.part}.json')
    with open(path, 'w') as f:
      json.dump(result, f, indent=1)
    print(f'wrote {path}')
    return
  with open(os.path.join(out_dir, 'torch.json')) as f:
    ref = json.load(f)
  with open(os.path.join(out_dir, 'tf.json')) as f:
    ours = json.load(f)
  if ref['flags'] != ours['flags']:
    raise SystemExit(f'The halves in {out_dir} were run with different flags: {ref["flags"]} vs '
                     f'{ours["flags"]}.')
  for k, v in ref['flags'].items():
    setattr(FLAGS, k, v)
  print_table(ref, ours)


if __name__ == '__main__':
  app.run(main)
