"""The GPU side of the engine: sizing the KV cache from a profiling pass (memory.py), the decode
steps' CUDA graphs and their persistent inputs (graphs.py, decode_inputs.py), and the model runner
that uses them (runner.py). Imported only when an engine runs on CUDA."""
