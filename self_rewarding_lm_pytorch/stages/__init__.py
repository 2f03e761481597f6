"""Stage configs, one file per kind. A stage is plain data until `run(ctx)`, which builds and calls a trainer."""
