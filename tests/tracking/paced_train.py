"""`python paced_train.py SECONDS -- <python -m airtune.train arguments>`: the real trainer, one step
every SECONDS at least, so that a test can act while it trains (stop the server, kill it after a
checkpoint). Only the pace is added; the trainer and its MLflow callback are the real ones."""

import sys
import time

from transformers import TrainerCallback

from airtune import tracking_callback
from airtune.train.__main__ import main


class Pace(TrainerCallback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


if __name__ == "__main__":
    seconds, argv = float(sys.argv[1]), sys.argv[3:]
    make = tracking_callback.make_callbacks
    tracking_callback.make_callbacks = lambda: make() + [Pace(seconds)]
    sys.exit(main(argv))
