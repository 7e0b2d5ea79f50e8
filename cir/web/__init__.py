"""The web demo's HTTP layer: the Flask app and routes, its guards, and the page's assets."""
