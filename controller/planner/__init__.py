"""Pure planning: partitions, plans (units + forwarding tables), the cost model, the simulator,
the partitioning methods and their reports. No broker, no threads."""
