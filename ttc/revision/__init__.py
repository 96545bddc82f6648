"""Sequential revisions (paper §6): the context format, training data, answer selection."""
