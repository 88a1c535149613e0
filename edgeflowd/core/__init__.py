"""What a board computes, as data: rows, row rules, allow-listed ops, execution units, and their
exact execution on row slices (pure torch: no I/O, no threads, no clocks)."""
