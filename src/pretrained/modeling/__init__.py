"""The model layer: `PreTrainedModel`, `ModuleUtilsMixin`, shared attention and outputs."""
