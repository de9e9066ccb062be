"""What label_image.py prints: the codelab's text, or JSON or CSV for scripts.

Each takes the LabelRun that poets.core.labeling returns. The text is the
codelab's (the evaluation time, then `daisy (score=0.99071)` lines), with
the image's path above each block once there are several images; JSON keeps
every image, a failed one with its error; CSV has one row per prediction.
"""

import csv
import dataclasses
import io
import json

OUTPUT_FORMATS = ('text', 'json', 'csv')


def format_text(run):
  """The codelab's output: the evaluation time, then `label (score=0.99071)`
  lines; with several images, each block starts with the image's path."""
  labelled = run.labelled
  if not labelled:
    return ''
  count = len(labelled)
  if len(run.results) == 1:
    lines = [f'Evaluation time (1-image): {run.seconds:.3f}s', '']
  else:
    images_text = '1 image' if count == 1 else f'{count} images'
    batches = '1 batch' if run.batches == 1 else f'{run.batches} batches'
    lines = [f'Evaluation time ({images_text} in {batches}): '
             f'{run.seconds:.3f}s, {run.seconds / count:.4f}s per image', '']
  for result in labelled:
    if len(run.results) > 1:
      lines.append(result.image)
    lines += [f'{p.label} (score={p.score:0.5f})' for p in result.predictions]
    lines.append('')
  return '\n'.join(lines)


def format_json(run):
  """A list of {image, predictions: [{label, score}], error?}."""
  items = []
  for result in run.results:
    item = {'image': result.image,
            'predictions': [dataclasses.asdict(p)
                            for p in result.predictions]}
    if result.error:
      item['error'] = result.error
    items.append(item)
  return json.dumps(items, indent=2) + '\n'


def format_csv(run):
  """image,rank,label,score rows; images that failed have none."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['image', 'rank', 'label', 'score'])
  for result in run.labelled:
    for rank, p in enumerate(result.predictions, 1):
      writer.writerow([result.image, rank, p.label, repr(p.score)])
  return out.getvalue()


def format_run(run, output_format):
  """`run` in one of OUTPUT_FORMATS."""
  return {'text': format_text, 'json': format_json,
          'csv': format_csv}[output_format](run)
