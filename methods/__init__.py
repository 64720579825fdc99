"""Built-in method plugins: one file per method, file name == registry key (``_*.py`` are not plugins)."""
