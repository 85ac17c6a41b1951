"""MoE serving: request batching, expert caching and offload, the serving loop."""
