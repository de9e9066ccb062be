"""The SavedModel export (--saved_model_dir), made from the frozen graph.

A SavedModel folder is replaced on each export, so each one carries the
owner marker (poets.files) listing its files: a folder holding anything else
is refused, never replaced.
"""

import os
import shutil

import tensorflow as tf

from poets import files
from poets.core import export
from poets.core import graph_names
from poets.errors import PoetsError


def check_saved_model_dir(saved_model_dir, flag='--saved_model_dir'):
  """Refuses, in one line, a --saved_model_dir that export may not replace:
  a file, or a folder holding anything an earlier export did not write."""
  if os.path.lexists(saved_model_dir) and not os.path.isdir(saved_model_dir):
    raise PoetsError(f'{flag} {saved_model_dir} is a file; pass a folder '
                     'path (retrain.py replaces only its own exports).')
  files.check_ours(saved_model_dir, flag,
                   'choose another folder or move them away')
  if os.path.isdir(saved_model_dir):
    files.check_writable(saved_model_dir, flag)
  files.check_writable(os.path.dirname(os.path.abspath(saved_model_dir)),
                       flag)


def build_saved_model(graph_def, folder, final_tensor_name):
  """Writes a SavedModel whose serving signature maps `image` to
  `prediction` into the new, empty `folder`, marked as retrain.py's."""
  graph = export.import_frozen(graph_def)
  os.rmdir(folder)  # The builder insists on creating the folder itself.
  with tf.compat.v1.Session(graph=graph) as session:
    signature = tf.compat.v1.saved_model.predict_signature_def(
        inputs={'image': graph.get_tensor_by_name(f'{graph_names.INPUT_NAME}:0')},
        outputs={'prediction': graph.get_tensor_by_name(
            f'{final_tensor_name}:0')})
    builder = tf.compat.v1.saved_model.Builder(folder)
    builder.add_meta_graph_and_variables(
        session, [tf.compat.v1.saved_model.SERVING],
        signature_def_map={'serving_default': signature})
    builder.save()
  files.mark_ours(folder, files.files_under(folder), 'retrain.py')


def export_saved_model(graph_def, saved_model_dir, final_tensor_name):
  """build_saved_model in a temporary folder, swapped in, so a failure (or
  Ctrl-C) leaves any previous export intact and no temporary folder behind.
  Only an empty folder or an earlier export, recognised by its
  files.OWNER_MARKER, is replaced."""
  check_saved_model_dir(saved_model_dir)
  built = files.temporary_sibling(saved_model_dir)
  try:
    build_saved_model(graph_def, built, final_tensor_name)
    files.replace_directory(built, saved_model_dir)
  except BaseException:
    shutil.rmtree(built, ignore_errors=True)
    raise
