"""Training a model: the teacher, the student and the distilled student, as MLflow runs that resume."""
