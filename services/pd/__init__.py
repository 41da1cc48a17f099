"""Prefill/decode disaggregation: membership, health and drain of PD pools, their admin API
and the ``llmsched pd`` command (seed 004)."""
