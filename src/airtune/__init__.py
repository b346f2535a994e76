"""airtune: fine-tune large language models as Apache Airflow pipelines."""

__version__ = "0.1.0"
