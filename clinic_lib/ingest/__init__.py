"""Getting the clinic's data in: the drop format, the initial load and the daily refresh, the demo clinic, the public no-show file."""
