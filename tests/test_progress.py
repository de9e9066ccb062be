"""Tests for poets/progress.py: a bar on a terminal, plain lines in a log."""

import io
import logging

from tqdm import tqdm

from poets import progress


def test_a_log_gets_a_line_per_tenth_and_the_end(caplog, monkeypatch):
  caplog.set_level(logging.INFO, logger='absl')
  monkeypatch.setattr('sys.stderr', io.StringIO())  # Not a terminal.
  with progress.progress(200, 'Bottlenecks', 'img') as bar:
    assert isinstance(bar, progress.LoggedProgress)
    bar.min_seconds = 0
    for _ in range(50):
      bar.update(4)
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 10
  assert lines[0].startswith('Bottlenecks: 20/200 img (10%) in ')
  assert lines[-1].startswith('Bottlenecks: 200/200 img (100%) in ')
  assert lines[-1].endswith(' img/s')


def test_lines_are_spaced_in_time_but_the_end_always_shows(caplog):
  caplog.set_level(logging.INFO, logger='absl')
  bar = progress.LoggedProgress(1000, 'Bottlenecks', 'img', min_seconds=3600)
  for _ in range(1000):
    bar.update()
  assert [r.getMessage().split(' in ')[0] for r in caplog.records] == [
      'Bottlenecks: 1000/1000 img (100%)']


def test_a_terminal_gets_the_bar(monkeypatch):
  terminal = io.StringIO()
  terminal.isatty = lambda: True
  monkeypatch.setattr('sys.stderr', terminal)
  with progress.progress(10, 'Bottlenecks', 'img') as bar:
    assert isinstance(bar, tqdm)
    bar.update(10)
  assert '\r' in terminal.getvalue() and '10/10' in terminal.getvalue()
