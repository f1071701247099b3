"""Benchmarks that print figures, never timed assertions (machines are shared and noisy).

Each compares against a baseline measured in the same run and quotes ratios:
- `activations`: forward+backward time and memory of each activation (`tmafbench bench activations`);
- `training`: one training epoch or one optimiser step per activation (`bench epoch`, `bench step`);
- `packing`: cells per hour, packed against one cell at a time and a torch.func vmap ensemble (`bench pack`);
- `gpu`: one JSON that proves the GPU path within a time budget, with a CPU stand-in per section (`bench gpu`);
- `scheduler`: the worker loop's lock errors, duplicates, overhead and recovery (`bench scheduler`);
- `reports`: rendering a synthetic study (`tmafbench report benchmark`).

This layer sits beside the CLI: it may use every package below it, and nothing imports it but
`tmafbench.cli` and the tests.
"""
