"""Simulated vLLM/SGLang engines: a real-time HTTP server and a virtual-time fleet simulator."""
