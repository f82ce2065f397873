"""kvserve's benchmark harness: WORKLOAD.md's presets, datasets, the serving load generator and its
metrics, measured the way `vllm bench` measures so that figures line up across engines."""
