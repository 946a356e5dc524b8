"""Where summaries go: TensorBoard runs and what its dashboards show."""
