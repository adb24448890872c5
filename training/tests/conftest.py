"""Puts training/ on sys.path so the tests import ``ichseg_training`` from the source tree."""
import pathlib
import sys

TRAINING = pathlib.Path(__file__).resolve().parent.parent
if str(TRAINING) not in sys.path:
    sys.path.insert(0, str(TRAINING))
