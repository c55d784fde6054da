"""zsk: eleven published vision-and-language methods behind one command line."""

__version__ = "0.1.0"
