"""The HTTP front end: the page, v1 REST and WebSocket, OIP REST."""
