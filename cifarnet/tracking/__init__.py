"""MLflow tracking: the store and its tag schema, tracked runs, and reading runs back."""
