"""EdgeFlow controller side: model zoo, layer graph, partitions, plans, and the CLI."""
