"""Engines drive shard tasks: `local` (processes/threads on this machine) or `ray` (workers/)."""
