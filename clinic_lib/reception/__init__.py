"""What reception uses: the callback list, reminders, the API, the signed-in screen and its accounts."""
