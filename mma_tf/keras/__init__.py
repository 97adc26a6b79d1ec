"""MMA the Keras way: `AdversarialModel` wraps your model so that training is compile() + fit().

  base = build_my_model()                      # any Keras model from [0, 1] images to logits
  model = mma_tf.keras.AdversarialModel(base, objective='mma', norm='Linf', hinge_maxeps=0.45)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  model.fit(x_train, y_train, batch_size=50, epochs=30, validation_data=(x_val, y_val),
            callbacks=[keras.callbacks.BackupAndRestore('backup/')])
  base.export('export/')                       # or model.export(...): logits from [0, 1] images

Settings are the `TrainConfig` fields (same names and defaults as the CLI's flags, the objective's
own settings included) that say what a step computes; the ones Keras owns are set the Keras way
(`_KERAS_OWNS`). `train_step` runs `step.ReplicaStep`, the Trainer's step: on the same batch,
weights and memories both give the same result.

The example index. The eps memory (and the perturbation memory) keep one row per training
example, keyed by its index; the wrapper attaches it, and it travels with the example:
  - arrays `fit(x, y)` (images uint8 0-255 or float in [0, 1], integer labels): index = row of x.
    The wrapper batches them itself: every epoch is a permutation drawn from (seed, epoch)
    (shuffle=False: the arrays' order), in batches of exactly batch_size (the last partial batch
    is dropped, as the Trainer does). So an epoch replayed after a restart (BackupAndRestore) is
    the same epoch. `x={'image': images, 'index': indices}` gives your own indices.
  - a finite `tf.data.Dataset` of batches (images, labels) in a fixed order: index = position in
    the dataset. A dataset that shuffles (a shuffle op in its graph, or options().deterministic
    False) is refused: its positions would name other examples every epoch. To shuffle, attach
    the index first (`with_index(ds)`, before shuffle and batch): batches ({'image', 'index'},
    labels) carry their own index.
Data with more examples than the memory holds is refused (arrays before training; datasets as
they are read, an error naming the example), never a silent wrong row. The memory is sized by
`num_examples`, or else by the first fit()'s training data.

Resume: the memories are weights of the wrapper and the attack randomness is keyed by
`optimizer.iterations`, so `BackupAndRestore` (save_freq='epoch') resumes exactly; mid-epoch
backups (save_freq=N) replay the interrupted epoch from its start, as for any Keras model.

Where each part lives: `model.py` (the wrapper: settings, compile, fit, the train and test steps,
export, config), `adapters.py` (arrays and datasets as indexed batches, the shuffling rules, the
checks as data is read) and `statistics.py` (the metric that sums the objective's statistics).
"""
from mma_tf.keras.adapters import with_index
from mma_tf.keras.model import _KERAS_OWNS, SETTINGS, AdversarialModel, settings_of  # noqa: F401

__all__ = ['AdversarialModel', 'SETTINGS', 'settings_of', 'with_index']
