"""The benchmark suite behind `outbox_bench`: one module per group of figures, run by `suite`."""
