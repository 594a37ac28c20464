"""Training: the loop shared by teacher and students, checkpoints and run metadata."""
