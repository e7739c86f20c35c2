"""LLM access: the offline keyword model, its OpenAI-compatible app, transports and clients."""
