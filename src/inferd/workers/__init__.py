"""`inferd serve --workers N`: front-end processes and the model process they forward to."""
