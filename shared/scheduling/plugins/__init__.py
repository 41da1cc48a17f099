"""Scheduling plugins: filters, scorers and pickers behind three small interfaces."""
