"""The proving ground: a procedural shapes dataset, the embedded demo model, its metrics."""
