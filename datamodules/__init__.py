"""Data modules and eval-set loaders: GLDv2, revisited ROxford5k/RParis6k, embedded synthetic dataset."""
