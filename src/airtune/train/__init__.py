"""The training program: `python -m airtune.train --spec SPEC.json --data DATA_DIR --output OUT_DIR`.

One plain module per stage (sft.py, ...); args.py is the one place that maps the resolved spec to
TRL/PEFT/transformers arguments. Never imports Airflow.
"""
