"""`python -m scripts.evaluate`: exactly `python evaluate.py`."""

from scripts import run_script

if __name__ == '__main__':
  run_script('evaluate.py')
