"""`python -m airtune.evaluate --spec <job>/spec.json --data <job>/data --model <folder> --output <job>/evaluation`"""

import sys

from airtune.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
