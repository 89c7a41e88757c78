# The team MLflow server: the official image (same MLflow version as the clients, see
# pyproject.toml's environment) plus the Postgres driver and the S3 client it needs.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir "psycopg2-binary>=2.9,<3" "boto3>=1.28"
