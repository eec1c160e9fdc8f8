"""The network: CifarNet from feature flags, paired initialisation, architecture summaries.

Never picks a device or a dtype: the training layer does."""
