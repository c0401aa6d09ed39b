"""The project's services (trainer, generator, classifier, analyzer) and the `pneumonia` command."""
