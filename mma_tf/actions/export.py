"""The trained model as a SavedModel (mma_tf.export): the chosen checkpoint's weights."""
from mma_tf import export as export_lib
from mma_tf.actions.checkpoints import restore_model_weights


def export_checkpoint(task, checkpoint, export_dir, log):
  """Exports `checkpoint`'s model weights (None: the task's current weights) as a SavedModel,
  atomically.

  The exported model is a new one from the task's factory (outside the strategy's scope), or,
  for a model given as an instance, the live model, which then keeps the checkpoint's weights.
  Raises ValueError, writing nothing, unless every weight of the model came from the checkpoint
  and every model weight in the checkpoint found its place.
  """
  if task.model_fn is not None:
    model = task.new_model()
    if not checkpoint:
      model.set_weights(task.model.get_weights())
  else:
    model = task.model
  if checkpoint:
    restore_model_weights(model, checkpoint)
  export_lib.export_saved_model(model, export_dir, task.data.image_shape)
  log(f'Exported {"best checkpoint " + checkpoint if checkpoint else "final weights"} to '
      f'{export_dir}')
