"""The worker agent: one per GPU host, starting, sleeping and proxying its engine instances."""
