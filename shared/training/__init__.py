"""Training helpers shared by the services."""
