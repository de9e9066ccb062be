"""Tests for poets/pipeline.py: what a run says about the photos it found."""

from conftest import make_image_dir
from poets.core import image_listing
from poets import pipeline


def test_a_run_names_changed_labels_and_counts_each_split(tmp_path, caplog):
  make_image_dir(tmp_path, colours={'Sunny Flowers': (230, 200, 30),
                                    'red': (200, 30, 30)})
  pipeline.log_image_lists(image_listing.create_image_lists(str(tmp_path), 10, 10))
  logged = [record.getMessage() for record in caplog.records]
  # One line for the folder whose label differs, none for 'red'.
  assert [line for line in logged if line.startswith('Folder ')] == [
      "Folder 'Sunny Flowers' becomes the label 'sunny flowers'."]
  assert logged[-1] == (
      'Images per class:\n'
      'class          training  validation  testing\n'
      'red                  16           2        2\n'
      'sunny flowers        17           2        1\n'
      'total                33           4        3')
