"""The model versions a worker serves: deployment, hot swap, retirement, A/B routing."""
