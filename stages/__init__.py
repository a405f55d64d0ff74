"""One thin click entry per DVC stage: each wires params.yaml to the library and writes outputs."""
