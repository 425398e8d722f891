"""The ground every job stands on: settings, the database and its migrations, clinic-local time, clinic days, errors."""
