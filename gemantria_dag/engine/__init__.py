"""The embedded engine: llama.cpp's `llama-server`, started and stopped by the project, like the
embedded Postgres. `files.py` finds the binary and the model file; `server.py` runs the server."""
