"""`python -m scripts.experiments`: exactly `python experiments.py`."""

from scripts import run_script

if __name__ == '__main__':
  run_script('experiments.py')
