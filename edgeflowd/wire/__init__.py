"""What crosses the broker: typed topics, tensors as bytes, frames, control messages and
assignments (pure: values in, bytes out and back; built on the core, never on the network)."""
