"""A persistent vision-feature store: the frozen tower's outputs computed once per dataset and read by
training instead of pixels (``datasets.<name>.feature_store``). See :mod:`minigpt4.features.store`."""
