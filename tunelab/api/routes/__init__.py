"""One module per resource; each route is thin and calls the functions the CLI calls."""
