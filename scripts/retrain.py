"""`python -m scripts.retrain`: exactly `python retrain.py`."""

from scripts import run_script

if __name__ == '__main__':
  run_script('retrain.py')
