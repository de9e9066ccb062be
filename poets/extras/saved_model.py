"""The SavedModel export (--saved_model_dir), made from the frozen graph.

A SavedModel folder is replaced on each export, so each one carries a marker
listing its files: a folder holding anything else is refused, never replaced.
"""

import os
import shutil

import tensorflow as tf

from poets import files
from poets.core import export
from poets.core import graph_names
from poets.errors import PoetsError


# Written into every SavedModel export, listing what the export holds: a
# folder with this file and nothing else is one retrain.py may replace.
EXPORT_MARKER = 'written_by_retrain.txt'


def _files_under(folder):
  return sorted(os.path.relpath(os.path.join(root, name), folder)
                for root, _, names in os.walk(folder) for name in names)


def _strangers(saved_model_dir):
  """Files in an earlier export that the export did not write (all of them
  if it has no marker)."""
  marker = os.path.join(saved_model_dir, EXPORT_MARKER)
  present = _files_under(saved_model_dir)
  if not os.path.isfile(marker):
    return present
  with open(marker, errors='surrogateescape') as f:
    written = set(f.read().splitlines()[1:]) | {EXPORT_MARKER}
  return [name for name in present if name not in written]


def check_saved_model_dir(saved_model_dir, flag='--saved_model_dir'):
  """Refuses, in one line, a --saved_model_dir that export may not replace:
  a file, or a folder holding anything an earlier export did not write."""
  if os.path.lexists(saved_model_dir) and not os.path.isdir(saved_model_dir):
    raise PoetsError(f'{flag} {saved_model_dir} is a file; pass a folder '
                     'path (retrain.py replaces only its own exports).')
  if os.path.isdir(saved_model_dir):
    strangers = _strangers(saved_model_dir)
    if strangers:
      raise PoetsError(
          f'{flag} {saved_model_dir} holds files retrain.py did not write '
          f'({strangers[0]}{", ..." if len(strangers) > 1 else ""}); choose '
          'another folder or move them away.')
    files.check_writable(saved_model_dir, flag)
  files.check_writable(os.path.dirname(os.path.abspath(saved_model_dir)),
                       flag)


def export_saved_model(graph_def, saved_model_dir, final_tensor_name):
  """A SavedModel whose serving signature maps `image` to `prediction`.

  Built in a temporary folder and swapped in, so a failure (or Ctrl-C)
  leaves any previous export intact and no temporary folder behind. Only an
  empty folder or an earlier export, recognised by its EXPORT_MARKER, is
  replaced.
  """
  check_saved_model_dir(saved_model_dir)
  graph = export.import_frozen(graph_def)
  built = files.temporary_sibling(saved_model_dir)
  try:
    os.rmdir(built)  # The builder insists on creating the folder itself.
    with tf.compat.v1.Session(graph=graph) as session:
      signature = tf.compat.v1.saved_model.predict_signature_def(
          inputs={'image': graph.get_tensor_by_name(
              f'{graph_names.INPUT_NAME}:0')},
          outputs={'prediction': graph.get_tensor_by_name(
              f'{final_tensor_name}:0')})
      builder = tf.compat.v1.saved_model.Builder(built)
      builder.add_meta_graph_and_variables(
          session, [tf.compat.v1.saved_model.SERVING],
          signature_def_map={'serving_default': signature})
      builder.save()
    files.atomic_write(os.path.join(built, EXPORT_MARKER), ''.join(
        f'{line}\n' for line in [
            'retrain.py wrote this SavedModel and replaces it on its next '
            'export here; it will not replace a folder holding anything '
            'else. The files it wrote:'] + _files_under(built)))
    files.replace_directory(built, saved_model_dir)
  except BaseException:
    shutil.rmtree(built, ignore_errors=True)
    raise
