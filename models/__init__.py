"""Model definitions and the feature schema shared by training and serving."""
