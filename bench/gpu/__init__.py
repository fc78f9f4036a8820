"""`python -m bench.gpu`: every GPU figure in one command (see __main__.py for the parts and
their budgets). Importing the package imports no torch: its install part runs first, on a
machine whose packages it completes."""
