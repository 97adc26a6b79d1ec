"""What the training loop does around its steps, one job per module (the controller is
`mma_tf.trainer.Trainer`; what is trained is `mma_tf.task.Task`):

- `run_record`: the run directory's config.json, written at the start and checked on resume;
- `checkpoints`: what a resumed run restores, where each worker writes, the best model's copy;
- `selection`: validation at epoch ends and the choice of the best model;
- `summaries`: TensorBoard scalars and the progress lines;
- `export`: the chosen weights as a SavedModel.
"""
