"""boto3 helpers run by make targets: ``python -m infra.tools.<name>``."""
