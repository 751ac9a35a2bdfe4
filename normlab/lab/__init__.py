"""The lab: datasets, models, trainer, metrics, reports and the CLI. Imports the library, never
the other way round."""
