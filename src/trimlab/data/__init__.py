"""DataModules: one per modality, each reading real datasets from their on-disk formats."""
