"""`python -m scripts.label_image`: exactly `python label_image.py`."""

from scripts import run_script

if __name__ == '__main__':
  run_script('label_image.py')
