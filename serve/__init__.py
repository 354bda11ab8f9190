"""Ray Serve application: one deployment per registered model with dynamic
batching and LoRA multiplexing, an ensemble deployment, and a FastAPI ingress."""
