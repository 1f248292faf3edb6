"""The executor service: runs tasks' plans with tools and serves their event streams."""
