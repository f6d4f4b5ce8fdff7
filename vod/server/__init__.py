"""Video servers: stream their stripe of a movie's frames to a client (issue 5)."""
