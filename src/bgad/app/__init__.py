"""The application on top of the library: the command line, run folders, reports, benchmarks and floors."""
