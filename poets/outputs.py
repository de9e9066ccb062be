"""A run's outputs as one set: the graph, its labels, the SavedModel and the
.tflite are all the new run's or all the old one's, after any stop.

Each is first written under a temporary name beside its place (the slow
parts, the SavedModel and the .tflite conversion, included); only when all
are written are they renamed into place, one right after another. A stop
before that leaves every old output as it was and no temporary file behind.

Every graph carries its run's id in a constant `retrain_run_id`, and the
labels file gets a small manifest beside it (`<labels stem>.run.json`: the
id and the labels' SHA-256), so label_image.py can tell a graph and a labels
file of different runs apart, even if the pair is swapped while it reads.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import uuid

import tensorflow as tf

from poets import files
from poets.errors import PoetsError

RUN_ID_NODE = 'retrain_run_id'
MANIFEST_SUFFIX = '.run.json'


@dataclasses.dataclass(frozen=True)
class RunSet:
  """Where one run's outputs go; saved_model_dir and tflite may be ''."""
  graph: str
  labels: str
  saved_model_dir: str = ''
  tflite: str = ''


def new_run_id():
  return uuid.uuid4().hex


def with_run_id(graph_def, run_id):
  """A copy of `graph_def` with `run_id` in a constant nothing reads."""
  marked = tf.compat.v1.GraphDef()
  marked.CopyFrom(graph_def)
  node = marked.node.add()
  node.name = RUN_ID_NODE
  node.op = 'Const'
  node.attr['dtype'].type = tf.string.as_datatype_enum
  node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(run_id))
  return marked


def run_id_of(graph_def):
  """The run id a graph was saved with, or None (another tool's graph)."""
  for node in graph_def.node:
    if node.name == RUN_ID_NODE and node.op == 'Const':
      return tf.make_ndarray(node.attr['value'].tensor).item().decode()
  return None


def manifest_path(labels_path):
  """Beside the labels; its name shortened if the suffix would pass NAME_MAX."""
  folder, name = os.path.split(labels_path)
  stem = os.path.splitext(name)[0]
  return os.path.join(folder, files.fitted_name(
      stem, files.NAME_MAX - len(MANIFEST_SUFFIX)) + MANIFEST_SUFFIX)


def manifest_text(run_id, labels_bytes):
  return json.dumps({'run_id': run_id,
                     'labels_sha256': hashlib.sha256(labels_bytes).hexdigest(),
                     'written_by': 'retrain.py'}, indent=1) + '\n'


def read_manifest(labels_path):
  """The labels file's manifest as a dict, or None if it has none."""
  try:
    with open(manifest_path(labels_path), encoding='utf-8') as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return None
  return manifest if isinstance(manifest, dict) else None


def save(run_set, graph_def, labels, build_saved_model=None,
         make_tflite=None):
  """Writes the run's outputs as one set; returns the paths written.

  `build_saved_model(graph_def, folder)` builds the SavedModel in the new
  folder `folder`; `make_tflite(graph_def)` returns the .tflite bytes. Both
  get the graph with the run id in it.
  """
  run_id = new_run_id()
  graph_def = with_run_id(graph_def, run_id)
  labels_bytes = ''.join(f'{label}\n' for label in labels).encode('utf-8')
  staged = []  # (temporary, final), in the order they are renamed
  current = run_set.tflite or run_set.saved_model_dir or run_set.labels
  try:
    if run_set.tflite:
      staged.append((files.staged_write(run_set.tflite, make_tflite(graph_def)),
                     run_set.tflite))
    if run_set.saved_model_dir:
      current = run_set.saved_model_dir
      built = files.temporary_sibling(run_set.saved_model_dir)
      staged.append((built, run_set.saved_model_dir))
      build_saved_model(graph_def, built)
    current = run_set.labels
    staged.append((files.staged_write(run_set.labels, labels_bytes),
                   run_set.labels))
    staged.append((files.staged_write(
        manifest_path(run_set.labels),
        manifest_text(run_id, labels_bytes).encode('utf-8')),
                   manifest_path(run_set.labels)))
    current = run_set.graph
    staged.append((files.staged_write(run_set.graph,
                                graph_def.SerializeToString()),
                   run_set.graph))
    while staged:
      temporary, current = staged[0]
      if os.path.isdir(temporary):
        files.replace_directory(temporary, current)
      else:
        os.replace(temporary, current)
      staged.pop(0)
  except BaseException as e:
    for temporary, _ in staged:
      if os.path.isdir(temporary):
        shutil.rmtree(temporary, ignore_errors=True)
      elif os.path.exists(temporary):
        os.unlink(temporary)
    if isinstance(e, OSError) and files.environment_error(e):
      # Named by the output, not its temporary name; the old set stays.
      raise PoetsError(files.environment_error(
          OSError(e.errno, e.strerror, current))) from e
    raise
  return [path for path in (run_set.graph, run_set.labels,
                            run_set.saved_model_dir, run_set.tflite) if path]
