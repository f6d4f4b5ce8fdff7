"""Clients: request a movie, merge the striped streams, play, cache, report CDONE (issue 5)."""
